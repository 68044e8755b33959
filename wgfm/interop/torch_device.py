"""Where a PyTorch model runs (device) and in which precision (dtype), for
:func:`wgfm.interop.torch_field`: names checked against this machine, a module moved once, and
a module's untrained copy built directly where it sits."""

from __future__ import annotations

import copy

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPES_ALL = {**_DTYPES, "float64": torch.float64}


def as_torch_dtype(dtype) -> torch.dtype | None:
    """``dtype`` (None, a floating ``torch.dtype``, or its name: ``"bfloat16"``, ``"float16"``,
    ``"float32"``, ``"float64"``) as a ``torch.dtype``; anything else is a ``ValueError``."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in _DTYPES_ALL:
        return _DTYPES_ALL[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(
        f"`dtype` must be a floating torch.dtype, one of {', '.join(_DTYPES_ALL)}, or None, "
        f"got {dtype!r}."
    )


def resolve_device(device=None, module: torch.nn.Module | None = None) -> torch.device:
    """``device`` (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``, a ``torch.device``) checked
    against what this machine has; None: ``module``'s device when it already sits on an
    accelerator, else the accelerator when one is present (CUDA, then MPS), else the CPU."""
    if device is None:
        here = module_device(module)
        if here is not None and here.type != "cpu":
            return here
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"`device` must be 'cuda', 'mps', 'cpu' (or None: the accelerator when present), "
            f"got {device!r}."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r}: this PyTorch sees no CUDA device.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`device` {device!r}: this PyTorch has no MPS device.")
    if dev.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"`device` must be 'cuda', 'mps' or 'cpu', got {device!r}.")
    return dev


def place_module(module: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """Move ``module``'s weights (in place, once) to ``device`` (:func:`resolve_device`) and its
    floating weights and buffers to ``dtype`` (:func:`as_torch_dtype`; None keeps theirs).

    Returns:
        ``module``, on the resolved device, in eval mode."""
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    dev = resolve_device(device, module)
    tdtype = as_torch_dtype(dtype)
    check_dtype_on_device(tdtype, dev)
    if tdtype is None:
        return module.to(device=dev).eval()
    return module.to(device=dev, dtype=tdtype).eval()


def check_dtype_on_device(dtype: torch.dtype | None, dev: torch.device) -> None:
    if dtype == torch.float64 and dev.type == "mps":
        raise ValueError("`dtype` torch.float64 cannot run on `device` 'mps' (no float64 there).")


def reinitialised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same architecture freshly initialised by its own initialisers under
    ``torch.manual_seed(seed)``, built on ``module``'s device in its dtype (``module`` itself is
    left alone).

    A diffusers model (``from_config``): ``from_config(module.config)`` with that device as the
    default device, then cast to the dtype. Any other module: a copy whose re-initialisable
    weights (the parameters of every submodule with ``reset_parameters``) are never copied, but
    allocated empty on the device and filled by ``reset_parameters``; other parameters and
    buffers are copied. Either way no second host copy of weights that sit on an accelerator.

    Returns:
        The new module, in eval mode.

    Raises:
        ValueError: a ``reset_parameters`` left one of its module's parameters unset."""
    dev = module_device(module) or torch.device("cpu")
    dtype = module_dtype(module)
    torch.manual_seed(int(seed))
    if hasattr(type(module), "from_config") and hasattr(module, "config"):
        with torch.device(dev):
            fresh = type(module).from_config(module.config)  # pyright: ignore[reportAttributeAccessIssue]
        return fresh.to(dtype=dtype).eval()
    owners = [m for m in module.modules() if hasattr(m, "reset_parameters")]
    # deepcopy takes these entries of its memo as already copied: the weights to be reset are
    # never copied, only stood in for by storage-free meta tensors.
    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for m in owners
        for p in m._parameters.values()
        if p is not None
    }
    fresh = copy.deepcopy(module, memo)
    for name, m in fresh.named_modules():
        if not hasattr(m, "reset_parameters"):
            continue
        for k, p in m._parameters.items():
            if p is not None and p.is_meta:
                # NaN until reset: a parameter its reset_parameters does not set is caught below.
                fill = torch.full(p.shape, torch.nan, dtype=p.dtype, device=dev)
                m._parameters[k] = torch.nn.Parameter(fill, p.requires_grad)
        m.reset_parameters()  # pyright: ignore[reportCallIssue]
        for k, p in m._parameters.items():
            if p is not None and p.is_floating_point() and bool(torch.isnan(p).any()):
                raise ValueError(
                    f"the untrained control: {type(m).__name__}.reset_parameters left "
                    f"parameter {(name + '.' if name else '') + k!r} unset."
                )
    return fresh.eval()


def module_dtype(module: torch.nn.Module | None) -> torch.dtype | None:
    """The first floating parameter's dtype of ``module``, or None when it has none."""
    if module is not None:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def module_device(module: torch.nn.Module | None) -> torch.device | None:
    """The first parameter's (else buffer's) device of ``module``, or None when it has none."""
    if module is not None:
        for p in [*module.parameters(), *module.buffers()]:
            return p.device
    return None
