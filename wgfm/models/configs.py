"""Named network configurations: small CPU defaults and the paper's CIFAR-10 U-Net."""

from __future__ import annotations

from .core import Model
from .layers import MLP, UNet

# name -> (network class, keyword arguments)
CONFIGS: dict[str, tuple[type, dict]] = {
    # 2D toy data and low-dimensional mixtures.
    "mlp-small": (MLP, dict(width=64, depth=2)),
    "mlp": (MLP, dict(width=128, depth=3)),
    # 8x8 digits on CPU: two levels 8 -> 4, attention at 4x4.
    "unet-digits": (UNet, dict(width=32, channel_mults=(1, 2), num_res_blocks=1,
                                attention_resolutions=(4,))),
    # Tiny U-Net for tests and smoke runs on any image size divisible by 4.
    "unet-tiny": (UNet, dict(width=8, channel_mults=(1, 2), num_res_blocks=1,
                              attention_resolutions=(), groups=4)),
    # MNIST 28x28 on CPU: 28 -> 14 -> 7, attention at 7x7.
    "unet-mnist": (UNet, dict(width=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                               attention_resolutions=(7,))),
    # MNIST at half the width (~90 MFLOP per evaluation against unet-mnist's 356): the network of
    # the full CPU reproduction, where every Jacobian column and loop point is an evaluation.
    "unet-mnist-small": (UNet, dict(width=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                                     attention_resolutions=(7,))),
    # The paper's CIFAR-10 network (DDPM-style): width 64, multipliers (1, 2, 4, 8), two residual
    # blocks per level, attention in the innermost level (4x4 for 32x32 inputs).
    "unet-cifar10-paper": (UNet, dict(width=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2,
                                       attention_resolutions=(4,), groups=32, heads=4)),
}  # fmt: skip


def get_model(name: str, *, kind: str = "eps", conservative: bool = False, **overrides) -> Model:
    """The model ``name`` from :data:`CONFIGS`, with keyword ``overrides`` of its network."""
    if name not in CONFIGS:
        raise ValueError(f"`name` must be one of {tuple(CONFIGS)}, got {name!r}.")
    cls, kwargs = CONFIGS[name]
    return Model(cls(**{**kwargs, **overrides}), kind, conservative)
