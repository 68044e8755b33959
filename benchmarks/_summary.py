"""The issue's targets checked against one run's records: a Markdown table (``summary.md``
beside ``benchmarks.json``) and the same rows in the JSON (``targets``). A target whose
records are absent from the run (``--only``, no PyTorch) is listed as "not measured"."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable


def _rows(records, bench: str, impl_has: str = "", case_has: str = "") -> list[dict]:
    return [
        r
        for r in records
        if r["benchmark"] == bench and impl_has in r["impl"] and case_has in r["case"]
    ]


def _check(
    name: str,
    rows: Iterable[dict],
    value: Callable[[dict], float | None],
    op: str,
    goal: float,
    label: Callable[[dict], str] = lambda r: r["case"],
) -> dict:
    """One target over the matching rows: met when every row's value meets ``op goal``. A
    speed-up is shown with its spread over rounds, all three rounded alike so that the median
    prints inside its own range."""
    vals = []
    for r in rows:
        v = value(r)
        if v is not None:
            vals.append((label(r), float(v), r["extra"]))
    if not vals:
        return {"target": name, "goal": f"{op} {goal:g}", "measured": "not measured", "met": None}
    ok = all(v >= goal if op == ">=" else v <= goal for _, v, _ in vals)
    key = getattr(value, "key", None)
    spread = [
        f" [{e[f'{key}_min']:.3g}-{e[f'{key}_max']:.3g}]" if f"{key}_min" in e else ""
        for _, _, e in vals
    ]
    meas = "; ".join(f"{c}: {v:.3g}{s}" for (c, v, _), s in zip(vals, spread, strict=True))
    return {"target": name, "goal": f"{op} {goal:g}", "measured": meas, "met": ok}


def _mlp(r) -> bool:
    return "UNet" not in r["case"]


def _get(key: str):
    """The record's ``extra[key]``; ``key`` kept on the getter so that ``_check`` finds its
    ``_min``/``_max`` spread."""

    def get(r):
        return r["extra"].get(key)

    get.key = key  # pyright: ignore[reportFunctionMemberAccess]
    return get


_speedup = _get("speedup")


def targets(records: list[dict]) -> list[dict]:
    R = records
    out = []
    for peer in ("torchdiffeq", "flow_matching"):
        for case, goal in (("D=2, n=10000,", 2.0), ("D=64, n=1000,", 2.0), ("D=2, n=1000,", 5.0)):
            rows = [r for r in _rows(R, "peer_sampling", peer, case) if _fastest_peer(r)]
            out.append(_check(f"sampling vs {peer}, {case[:-1]}", rows, _speedup, ">=", goal,
                              _peer_label))  # fmt: skip
    default = _rows(R, "peer_sampling", "(default)")
    out.append(_check("sampling: per-NFE time / bare jit field eval", default,
                      _get("per_nfe_vs_bare_eval"), "<=", 1.1))  # fmt: skip
    out.append(_check("sampling: bare field eval, fraction of matmul peak",
                      _rows(R, "peer_sampling", "bare"), _get("field_frac_of_peak"), ">=", 0.6))  # fmt: skip
    out.extend(_solver_choice(R))
    ll = "peer_likelihood"
    out.append(_check("exact likelihood D=64 vs flow_matching exact_divergence=True",
                      _rows(R, ll, "exact_divergence=True", "D=64,"), _speedup, ">=", 10.0))  # fmt: skip
    out.append(_check("Hutchinson likelihood D=64 vs flow_matching (1 probe each)",
                      _rows(R, ll, "exact_divergence=False", "D=64,"), _speedup, ">=", 3.0))  # fmt: skip
    out.append(_check("DDIM-50 vs diffusers DDIMScheduler loop",
                      [r for r in _rows(R, "peer_ddim", "diffusers") if _fastest_peer(r)],
                      _speedup, ">=", 3.0, _peer_label))  # fmt: skip
    # Against PyTorch's fastest eager and fastest compiled step of the run (fused or foreach
    # AdamW, network or whole step compiled): never against a slower formulation only.
    eager = [r for r in _rows(R, "train_step", "torch eager") if _fastest_in_group(r)]
    compiled = [r for r in _rows(R, "train_step", "torch.compile") if _fastest_in_group(r)]
    out.append(_check("training step (MLP) vs PyTorch eager (its fastest optimiser)",
                      [r for r in eager if _mlp(r)], _speedup, ">=", 1.5, _impl_case))  # fmt: skip
    out.append(_check("training step (digits U-Net, diffusers UNet2DModel) vs PyTorch eager "
                      "(its fastest optimiser)", [r for r in eager if not _mlp(r)], _speedup,
                      ">=", 1.5, _impl_case))  # fmt: skip
    out.append(_check("training step (MLP) vs torch.compile (its fastest)",
                      [r for r in compiled if _mlp(r)], _speedup, ">=", 1.5, _impl_case))  # fmt: skip
    out.append(_check("training step (MLP): fraction of matmul peak",
                      [r for r in _rows(R, "train_step", "wgfm") if _mlp(r)],
                      _get("frac_of_matmul_peak"), ">=", 0.5))  # fmt: skip
    jac = [r for r in _rows(R, "jacobian_asymmetry") if _dim(r["case"]) >= 64]
    # Runs before PyTorch's fastest was flagged compared torch.func vmap(jacfwd) alone.
    jac_peer = [
        r for r in jac if r["extra"].get("fastest_peer", r["impl"] == "torch.func vmap(jacfwd)")
    ]
    out.append(_check("exact Jacobian D>=64, default settings vs PyTorch's fastest formulation",
                      jac_peer, _get("wgfm_default_speedup"), ">=", 3.0, _peer_label))  # fmt: skip
    out.append(_check("exact Jacobian D>=64, default settings: fraction of peak",
                      [r for r in jac if "default" in r["impl"]], _get("peak_frac"), ">=", 0.8))  # fmt: skip
    fastest = lambda r: r["extra"].get("fastest_peer") is True  # noqa: E731
    out.append(_check("sub-Jacobian 64x64 on images vs PyTorch's fastest formulation",
                      [r for r in _rows(R, "sub_jacobian_64") if fastest(r)],
                      _get("wgfm_default_speedup"), ">=", 3.0, _impl_case))  # fmt: skip
    out.append(_check("sub-Jacobian 64x64, ddpm-cifar10 U-Net (flax port) vs PyTorch's fastest "
                      "formulation", [r for r in _rows(R, "diffusers_unet") if fastest(r)],
                      _get("wgfm_default_speedup"), ">=", 2.0, _impl_case))  # fmt: skip
    wg = [r for r in R if r["impl"].startswith("wgfm") and r["compile_s"] is not None]
    out.append(_check("compile time per wgfm entry point (s)", wg,
                      lambda r: r["compile_s"], "<=", 5.0,
                      lambda r: f"{r['benchmark']} {r['impl']} ({r['case']})"))  # fmt: skip
    return out


def _fastest_in_group(r) -> bool:
    """The fastest row of its kind in the run. Rows of older runs, which tried PyTorch's default
    optimiser loop only (no flag), do not count: a target met against them only is not met."""
    return r["extra"].get("fastest_in_group") is True


def _fastest_peer(r) -> bool:
    """The peer's fastest formulation in its group (``fastest_peer``); rows of runs that had one
    formulation per peer carry no flag and are their peer's only row."""
    return r["extra"].get("fastest_peer", True) is True


def _peer_label(r) -> str:
    """The row's case, led by its formulation where the run timed several (the flag is set)."""
    return _impl_case(r) if "fastest_peer" in r["extra"] else r["case"]


def _impl_case(r) -> str:
    return f"{r['impl']}, {r['case']}"


def _dim(case: str) -> int:
    import re

    m = re.search(r"\bD=(\d+)", case)
    return int(m.group(1)) if m else 0


DEFAULT_SOLVER = "Dopri5"  # wgfm.transport's default; compare_peer_sampling names rows by it


def _solver_choice(R) -> list[dict]:
    """The default solver against the alternative (Tsit5) and the peer (torchdiffeq's dopri5) at
    equal final error: at each error the other side reached, the default's NFE interpolated
    log-log between its tolerances (only within the range it covers). Met when it needs no more
    NFE at every one."""
    out = []
    for other in ("Tsit5", "torchdiffeq dopri5"):
        name = f"default solver ({DEFAULT_SOLVER}): NFE at {other}'s final error"
        parts, ok = [], True
        for case in sorted({r["case"] for r in _rows(R, "pf_solver_choice")}):
            wp = _rows(R, "pf_solver_choice", case_has=case)
            pts = {impl: [(r["extra"]["max_err_vs_ref"], r["extra"]["nfe"]) for r in wp
                          if r["impl"] == impl] for impl in (DEFAULT_SOLVER, other)}  # fmt: skip
            mine, theirs = pts[DEFAULT_SOLVER], pts[other]
            for err, nfe in sorted(theirs, reverse=True):
                at = nfe_at_error(mine, err)
                if at is None:
                    continue
                ok &= at <= nfe
                parts.append(f"{case}, err {err:.2g}: {DEFAULT_SOLVER} {at:.0f} / {other} {nfe}")
        out.append({"target": name, "goal": f"{DEFAULT_SOLVER} NFE <=",
                    "measured": "; ".join(parts) or "not measured", "met": ok if parts else None})  # fmt: skip
    return out


def nfe_at_error(points, err: float) -> float | None:
    """NFE at final error ``err`` on the work-precision curve ``points`` ``[(error, NFE)]``,
    interpolated linearly in (log error, log NFE); ``None`` outside the errors it spans. The
    curve is made monotone first (a tighter tolerance that did not lower the error adds no
    information about the cost of that error)."""
    pts = sorted(points, key=lambda p: p[1])  # by NFE
    mono: list[tuple[float, float]] = []
    for e, n in pts:
        if e > 0 and (not mono or e < mono[-1][0]):
            mono.append((e, n))
    for (e0, n0), (e1, n1) in itertools.pairwise(mono):
        if e1 <= err <= e0:
            if e0 == e1:
                return float(n0)
            w = (math.log(err) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return float(math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))))
    return float(mono[0][1]) if len(mono) == 1 and mono[0][0] == err else None


def markdown(rows: list[dict]) -> str:
    lines = ["| target | goal | measured (median speed-up [min-max over rounds]) | met |",
             "|---|---|---|---|"]  # fmt: skip
    for t in rows:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {met} |")
    return "\n".join(lines) + "\n"
