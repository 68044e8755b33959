"""The two controls every diagnosis is read against, on the same points as the network.

- :func:`gaussian_fit_score`: a true gradient on the data's scale, the exact score of the
  marginals of a Gaussian fitted to the clean samples (low-rank plus a floor by default, in
  O(N D) memory: :mod:`wgfm.diagnostics.gaussian_fit`). Its asymmetry is float rounding and its
  circulation quadrature error, so it shows how small "zero" is at each noise level.
- :func:`untrained_field`: the same architecture with freshly drawn parameters: what the
  architecture alone gives before any training.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..gmm import GaussianMixture, MarginalScore, score_field
from ..processes import AbstractProcess
from .gaussian_fit import LowRankScore, fit_low_rank_gaussian

GAUSSIAN_FIT_JITTER = 1e-3


def gaussian_fit_score(
    x,
    process: AbstractProcess,
    *,
    covariance: Literal["low_rank", "full"] = "low_rank",
    floor: float = GAUSSIAN_FIT_JITTER,
) -> LowRankScore | MarginalScore:
    """The exact score of the marginals of ``N(mean, cov + floor I)`` fitted to the samples ``x``
    ``(N, *shape)`` under ``process``. The floor keeps the covariance invertible when ``N`` is
    below the dimension or pixels are constant (MNIST's borders). Samples of any shape.

    Args:
        x: ``(N, *shape)`` finite samples, ``N >= 2``.
        process: the forward process whose marginals are scored.
        covariance: ``"low_rank"`` (default): the samples' span plus the floor, O(N D) memory,
            never a ``D x D`` matrix (:mod:`wgfm.diagnostics.gaussian_fit`); ``"full"``: the
            ``D x D`` covariance through :mod:`wgfm.gmm` (small ``D`` only: quadratic memory,
            fitted in float64 then validated in float32, which fails where the samples'
            variance is large against the floor). Both are the same model.
        floor: the isotropic variance added (> 0).

    Returns:
        A field ``(x, t) -> grad log p_t(x)`` shaped like one sample.

    Raises:
        ValueError: an unknown ``covariance``, fewer than 2 samples, or non-finite samples.
    """
    if covariance == "low_rank":
        return LowRankScore(fit_low_rank_gaussian(x, floor=floor), process)
    if covariance != "full":
        raise ValueError(f"`covariance` must be 'low_rank' or 'full', got {covariance!r}.")
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    if flat.shape[0] < 2:
        raise ValueError(f"`x` must hold at least 2 samples for a Gaussian fit, got {len(x)}.")
    if not np.isfinite(flat).all():
        raise ValueError("`x` holds non-finite values: the Gaussian fit needs finite samples.")
    cov = np.cov(flat.T).reshape(flat.shape[1], flat.shape[1])
    cov = cov + floor * np.eye(flat.shape[1])
    fit = GaussianMixture(
        jnp.ones(1, jnp.float32),
        jnp.asarray(flat.mean(0)[None], jnp.float32),
        jnp.asarray(cov[None], jnp.float32),
    )
    return score_field(fit, process)


def untrained_params(model, key, sample_shape: tuple[int, ...], dtype=jnp.float32):
    """Fresh parameters of ``model``, with every all-zero kernel redrawn LeCun-normal.

    DDPM-style U-Nets start their output convolution at zero so that training starts from
    ``eps = 0``; untouched, the untrained field's Jacobian would be exactly 0 and its asymmetry
    ratio 0/0. The ``i``-th zero kernel (in tree order) is drawn from ``fold_in(key, i + 1)``.

    Args:
        model: anything with ``init(key, sample_shape, dtype)``, such as
            :class:`wgfm.models.Model`.
        key: the draw.
        sample_shape: one sample's shape, e.g. ``(H, W, C)``.
        dtype: the parameters' dtype.

    Returns:
        The parameters, a PyTree as ``model.init`` returns.
    """
    params = model.init(key, tuple(sample_shape), dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, redrawn = [], 0
    for path, leaf in leaves:
        name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
        if name == "kernel" and not np.any(np.asarray(leaf)):
            redrawn += 1
            init = jax.nn.initializers.lecun_normal()
            leaf = init(jax.random.fold_in(key, redrawn), leaf.shape, leaf.dtype)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def untrained_field(field, key, sample_shape: tuple[int, ...]):
    """``field`` with :func:`untrained_params` in place of its parameters: the untrained control.

    Args:
        field: a field carrying ``model`` (with ``init``) and ``params``: a
            :class:`wgfm.models.ModelField`, or a field from
            :func:`wgfm.interop.load_diffusers`.
        key: the draw.
        sample_shape: one sample's shape, e.g. ``(H, W, C)``.

    Returns:
        The same kind of field, with fresh parameters in ``params``'s dtype.

    Raises:
        ValueError: ``field`` carries no ``model`` with ``init`` and ``params``.
    """
    model, params = getattr(field, "model", None), getattr(field, "params", None)
    if model is None or params is None or not hasattr(model, "init"):
        raise ValueError(
            f"`field` ({type(field).__name__}) carries no `model` with `init` and `params`, so "
            "its untrained copy cannot be built: pass the untrained control yourself."
        )
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    return eqx.tree_at(lambda f: f.params, field, untrained_params(model, key, sample_shape, dtype))
