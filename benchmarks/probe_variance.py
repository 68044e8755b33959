"""How many probes each estimator of the full-dimension asymmetry ratio needs for a 10%
standard error, on JAX fields whose exact ratio ``lambda`` is set (docs/design.md §1).

``wgfm.diagnostics.probe_asymmetry`` estimates ``||J - J^T||_F^2`` two ways: ``"vjp"``
(``||J v - J^T v||^2`` per probe, one JVP and one VJP) and ``"forward"`` (``2 ||J v||^2 -
2 v . J J v``, two JVPs, for fields without a VJP). Both are unbiased; their variances differ.
On fields ``x -> A x`` at ``D = 784`` with ``A = S + c W`` (``S`` symmetric, ``W``
antisymmetric, ``c`` set so ``lambda`` is exactly 0.03, 0.1 and 0.3; both Gaussian, or ``S``
with the decaying spectrum ``1/k`` and ``W`` of rank 4) and on a
784-D score-like MLP ``-x + grad phi(x) + c g(x)`` (``phi`` a tanh network, ``g`` a random
MLP, ``c`` set from the exact Jacobians so ``lambda = 0.1`` at the evaluation point), each
estimator runs ``repeats`` times with ``num_probes`` Rademacher probes; against the exact
``lambda`` (from the exact Jacobian) this gives the empirical relative standard error, the
probes needed for 10% (``num_probes (rel / 0.1)^2``), the bias, the median of the standard
error the estimator reports (``ratio_se``) and how often ``|estimate - lambda| <= 2 s.e.``.
Float64, so rounding does not enter the variances.

    python -m benchmarks.probe_variance [--repeats 400] [--probes 32]

writes ``benchmarks/results/probe_variance.json``; ``python -m benchmarks.publish`` renders
:func:`table` from it into docs/diagnose_your_model.md (``tests/test_published.py`` checks).
Not part of ``wgfm bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "probe_variance.json"
TARGET = 0.1  # relative standard error the probe counts are for
DIM = 784  # an MNIST image


def linear_field(lam: float, *, spread: bool = True, seed: int = 0):
    """``(field, A)``: ``x -> A x`` with ``A = S + c W``, ``||A - A^T|| / ||A|| = lam``
    exactly (``S`` and ``W`` are Frobenius-orthogonal: ``||A||^2 = ||S||^2 + c^2 ||W||^2``,
    ``||A - A^T|| = 2 c ||W||``). ``spread``: ``S`` and ``W`` Gaussian (spectra spread over all
    D directions, the easy case for probes); else ``S = -Q diag(1 / k) Q^T`` (a decaying
    spectrum, as a score's Hessian) and ``W`` of rank 4 (asymmetry in a few directions)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    g, h = rng.standard_normal((2, DIM, DIM)) / np.sqrt(DIM)
    if spread:
        s, w = (g + g.T) / 2, (h - h.T) / 2
    else:
        q, _ = np.linalg.qr(g)
        s = -(q / np.arange(1, DIM + 1)) @ q.T
        u, v = h[:, :4], h[:, 4:8]
        w = u @ v.T - v @ u.T
    c = lam * np.linalg.norm(s) / (np.linalg.norm(w) * np.sqrt(4 - lam**2))
    a = jnp.asarray(s + c * w)
    return (lambda x, t: a @ x), a


def mlp_field(lam: float, *, seed: int = 1):
    """``(field, x)``: ``-x + grad phi(x) + c g(x)`` with ``c`` solving, at ``x``,
    ``||J - J^T||^2 = lam^2 ||J||^2`` for ``J = H + c G`` (``H`` symmetric, the Hessian part;
    ``G`` the Jacobian of ``g``): ``c^2 (||G - G^T||^2 - lam^2 ||G||^2) - 2 c lam^2 <H, G> -
    lam^2 ||H||^2 = 0``, its positive root."""
    import jax
    import jax.numpy as jnp

    from wgfm.diagnostics import jacobian

    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.standard_normal((256, DIM)) / np.sqrt(DIM))
    b1 = jnp.asarray(rng.standard_normal(256))
    a1 = jnp.asarray(rng.standard_normal(256) / np.sqrt(256))
    u1 = jnp.asarray(rng.standard_normal((128, DIM)) / np.sqrt(DIM))
    u2 = jnp.asarray(rng.standard_normal((DIM, 128)) / np.sqrt(128))

    def grad_part(x):
        return -x + jax.grad(lambda y: a1 @ jnp.tanh(w1 @ y + b1))(x)

    def rot_part(x):
        return u2 @ jnp.tanh(u1 @ x)

    x = jnp.asarray(rng.standard_normal(DIM))
    h = np.asarray(jacobian(lambda y, t: grad_part(y), x, 0.0))
    g = np.asarray(jacobian(lambda y, t: rot_part(y), x, 0.0))
    qa = np.sum((g - g.T) ** 2) - lam**2 * np.sum(g**2)
    qb = -2 * lam**2 * np.sum(h * g)
    qc = -(lam**2) * np.sum(h**2)
    c = (-qb + np.sqrt(qb**2 - 4 * qa * qc)) / (2 * qa)
    return (lambda y, t: grad_part(y) + c * rot_part(y)), x


def measure(field, x, *, num_probes: int, repeats: int, seed: int = 2) -> dict:
    """The exact ``lambda`` at ``(x, 0)``, the per-JVP time, and per method the spread of
    ``repeats`` estimates with ``num_probes`` probes each."""
    import equinox as eqx
    import jax

    from wgfm.diagnosis.budget import time_jvp
    from wgfm.diagnostics import asymmetry, jacobian, probe_asymmetry
    from wgfm.diagnostics.jacobian import ProbeMethod

    lam = float(asymmetry(jacobian(field, x, 0.0)).ratio)
    out: dict = {"lambda_exact": lam, "per_jvp_ms": 1e3 * time_jvp(field, x, 0.0)}
    keys = jax.random.split(jax.random.key(seed), repeats)
    methods: tuple[ProbeMethod, ...] = ("vjp", "forward")
    for method in methods:

        @eqx.filter_jit
        def run(ks, method: ProbeMethod = method):
            return jax.vmap(
                lambda k: probe_asymmetry(
                    field, x, 0.0, key=k, num_probes=num_probes, method=method
                )
            )(ks)

        one = run(keys[:1])
        jax.block_until_ready(one)
        t0 = time.perf_counter()
        jax.block_until_ready(run(keys[:1]))
        per_probe_ms = 1e3 * (time.perf_counter() - t0) / num_probes
        p = run(keys)
        est, se = np.asarray(p.stats.ratio), np.asarray(p.ratio_se)
        a2 = np.asarray(p.asym_sq)
        rel = float(np.std(est, ddof=1) / lam)
        out[method] = {
            "mean_estimate": float(np.mean(est)),
            "relative_bias": float(np.mean(est) / lam - 1),
            "relative_se": rel,
            "probes_for_10pct": float(num_probes * (rel / TARGET) ** 2),
            "median_reported_relative_se": float(np.median(se / np.maximum(est, 1e-300))),
            "coverage_2se": float(np.mean(np.abs(est - lam) <= 2 * se)),
            # ||J - J^T||^2: the unbiased quantity, its per-probe variance relative to its mean
            "asym_sq_relative_sd_per_probe": float(
                np.std(a2, ddof=1) * np.sqrt(num_probes) / np.mean(a2)
            ),
            "ms_per_probe": per_probe_ms,
        }
    return out


def run_info() -> dict:
    from .run_all import git

    status = git("status", "--porcelain", "--", "wgfm", "benchmarks/probe_variance.py")
    return {
        "command": "python -m benchmarks.probe_variance " + " ".join(sys.argv[1:]),
        "commit": git("rev-parse", "HEAD"),
        "code_modified": None if status is None else bool(status),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Probes for a 10% s.e. of the asymmetry ratio.")
    ap.add_argument("--repeats", type=int, default=400, help="estimates per method and field")
    ap.add_argument("--probes", type=int, default=32, help="probes per estimate")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ._harness import machine_info, write_payload

    fields = []
    x = jnp.asarray(np.random.default_rng(3).standard_normal(DIM))
    for lam in (0.03, 0.1, 0.3):
        fields.append((f"A x, Gaussian S and W, lambda {lam}", linear_field(lam)[0], x))
    for lam in (0.03, 0.1, 0.3):
        f = linear_field(lam, spread=False)[0]
        fields.append((f"A x, S spectrum 1/k, W rank 4, lambda {lam}", f, x))
    f, x = mlp_field(0.1)
    fields.append(("MLP -x + grad phi(x) + c g(x), lambda 0.1", f, x))
    records = []
    for name, f, x in fields:
        r = measure(f, x, num_probes=args.probes, repeats=args.repeats)
        records.append({"field": name, **r})
        print(json.dumps(records[-1]), flush=True)
    payload = {
        "machine": machine_info(),
        "run": run_info(),
        "settings": {
            "dim": DIM,
            "num_probes": args.probes,
            "repeats": args.repeats,
            "target_relative_se": TARGET,
            "dtype": "float64",
            "probes": "rademacher",
        },
        "records": records,
    }
    return write_payload(args.out, payload)


def table(payload: dict) -> str:
    """The Markdown table of a run's JSON (for ``benchmarks.publish``)."""
    s, m, run = payload["settings"], payload["machine"], payload["run"]
    commit = (run.get("commit") or "unknown")[:10]
    if run.get("code_modified"):
        commit += " with uncommitted changes to the code"
    lines = [
        f"From `benchmarks/results/probe_variance.json`: `{run['command'].strip()}`, "
        f"{m['time'][:16].replace('T', ' ')}, commit `{commit}`, jax {m['jax']} on "
        f"{m['platform']}; D = {s['dim']}, {s['repeats']} estimates of {s['num_probes']} "
        f"{s['probes']} probes per estimator, {s['dtype']}. Relative s.e.: the spread of the "
        "estimates over the exact lambda; probes for 10%: "
        f"{s['num_probes']} x (relative s.e. / 0.1)^2.",
        "",
        "| field | exact lambda | estimator | relative s.e. | probes for 10% s.e. | "
        "reported s.e. (median) | bias | within 2 s.e. | ms per probe | ms per JVP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        for method in ("vjp", "forward"):
            e = r[method]
            lines.append(
                f"| {r['field']} | {r['lambda_exact']:.3g} | {method} | "
                f"{e['relative_se']:.3g} | {_count(e['probes_for_10pct'])} | "
                f"{e['median_reported_relative_se']:.3g} | {100 * e['relative_bias']:+.1f}% | "
                f"{100 * e['coverage_2se']:.0f}% | {e['ms_per_probe']:.3g} | "
                f"{r['per_jvp_ms']:.3g} |"
            )
    return "\n".join(lines)


def _count(n: float) -> str:
    """A probe count: under 10 to two digits (below 1: one probe already does better)."""
    return f"{n:.2g}" if n < 10 else f"{n:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
