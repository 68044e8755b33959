"""The issue's targets checked against one run's records: a Markdown table (``summary.md``
beside ``benchmarks.json``) and the same rows in the JSON (``targets``). A target whose
records are absent from the run (``--only``, no PyTorch) is listed as "not measured"."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def _rows(records, bench: str, impl_has: str = "", case_has: str = "") -> list[dict]:
    return [
        r
        for r in records
        if r["benchmark"] == bench and impl_has in r["impl"] and case_has in r["case"]
    ]


def _check(
    name: str, rows: Iterable[dict], value: Callable[[dict], float | None], op: str, goal: float
) -> dict:
    """One target over the matching rows: met when every row's value meets ``op goal``."""
    vals = []
    for r in rows:
        v = value(r)
        if v is not None:
            vals.append((r["case"], float(v), r["extra"]))
    if not vals:
        return {"target": name, "goal": f"{op} {goal:g}", "measured": "not measured", "met": None}
    ok = all(v >= goal if op == ">=" else v <= goal for _, v, _ in vals)
    spread = [
        f" [{e['speedup_min']:.2g}-{e['speedup_max']:.2g}]"
        if "speedup_min" in e and value.__name__ == "_speedup" else ""
        for _, _, e in vals
    ]  # fmt: skip
    meas = "; ".join(f"{c}: {v:.3g}{s}" for (c, v, _), s in zip(vals, spread, strict=True))
    return {"target": name, "goal": f"{op} {goal:g}", "measured": meas, "met": ok}


def _speedup(r):
    return r["extra"].get("speedup")


def _get(key: str):
    return lambda r: r["extra"].get(key)


def targets(records: list[dict]) -> list[dict]:
    R = records
    out = []
    for peer in ("torchdiffeq", "flow_matching"):
        for case, goal in (("D=2, n=10000,", 2.0), ("D=64, n=1000,", 2.0), ("D=2, n=1000,", 5.0)):
            rows = _rows(R, "peer_sampling", peer, case)
            out.append(_check(f"sampling vs {peer}, {case[:-1]}", rows, _speedup, ">=", goal))
    default = _rows(R, "peer_sampling", "(default)")
    out.append(_check("sampling: per-NFE time / bare jit field eval", default,
                      _get("per_nfe_vs_bare_eval"), "<=", 1.1))  # fmt: skip
    out.append(_check("sampling: bare field eval, fraction of matmul peak",
                      _rows(R, "peer_sampling", "bare"), _get("field_frac_of_peak"), ">=", 0.6))  # fmt: skip
    out.append(_solver_choice(R))
    ll = "peer_likelihood"
    out.append(_check("exact likelihood D=64 vs flow_matching exact_divergence=True",
                      _rows(R, ll, "exact_divergence=True", "D=64,"), _speedup, ">=", 10.0))  # fmt: skip
    out.append(_check("Hutchinson likelihood D=64 vs flow_matching (1 probe each)",
                      _rows(R, ll, "exact_divergence=False", "D=64,"), _speedup, ">=", 3.0))  # fmt: skip
    out.append(_check("DDIM-50 vs diffusers DDIMScheduler loop",
                      _rows(R, "peer_ddim", "diffusers"), _speedup, ">=", 3.0))  # fmt: skip
    out.append(_check("training step (MLP) vs PyTorch eager",
                      _rows(R, "train_step", "torch eager"), _speedup, ">=", 1.5))  # fmt: skip
    out.append(_check("training step (MLP) vs torch.compile",
                      _rows(R, "train_step", "torch.compile"), _speedup, ">=", 1.5))  # fmt: skip
    out.append(_check("training step: fraction of matmul peak",
                      _rows(R, "train_step", "wgfm"), _get("frac_of_matmul_peak"), ">=", 0.5))  # fmt: skip
    jac = [r for r in _rows(R, "jacobian_asymmetry") if _dim(r["case"]) >= 64]
    out.append(_check("exact Jacobian D>=64, default settings vs torch.func vmap(jacfwd)",
                      [r for r in jac if r["impl"] == "torch.func vmap(jacfwd)"],
                      _get("wgfm_default_speedup"), ">=", 3.0))  # fmt: skip
    out.append(_check("exact Jacobian D>=64, default settings: fraction of peak",
                      [r for r in jac if "default" in r["impl"]], _get("peak_frac"), ">=", 0.8))  # fmt: skip
    out.append(_check("sub-Jacobian 64x64 on images vs PyTorch chunked JVPs",
                      _rows(R, "sub_jacobian_64", "torch"), _get("wgfm_speedup"), ">=", 3.0))  # fmt: skip
    wg = [r for r in R if r["impl"].startswith("wgfm") and r["compile_s"] is not None]
    out.append(_check("compile time per wgfm entry point (s)", wg,
                      lambda r: r["compile_s"], "<=", 5.0))  # fmt: skip
    return out


def _dim(case: str) -> int:
    import re

    m = re.search(r"\bD=(\d+)", case)
    return int(m.group(1)) if m else 0


def _solver_choice(R) -> dict:
    """Default solver (Tsit5) against Dopri5 at each tolerance: no more NFE, no larger error."""
    wp = {(r["impl"], r["extra"]["tol"]): r["extra"] for r in _rows(R, "pf_solver_choice")}
    tols = sorted({t for s, t in wp if s == "Tsit5" and ("Dopri5", t) in wp}, reverse=True)
    if not tols:
        return {"target": "default solver: fewer NFE than Dopri5 at equal error", "goal": "",
                "measured": "not measured", "met": None}  # fmt: skip
    parts, ok = [], True
    for t in tols:
        a, b = wp[("Tsit5", t)], wp[("Dopri5", t)]
        ok &= a["nfe"] <= b["nfe"] and a["max_err_vs_ref"] <= b["max_err_vs_ref"]
        parts.append(f"tol {t:g}: Tsit5 {a['nfe']} NFE err {a['max_err_vs_ref']:.2g} / "
                     f"Dopri5 {b['nfe']} NFE err {b['max_err_vs_ref']:.2g}")  # fmt: skip
    return {"target": "default solver: fewer NFE than Dopri5 at equal error",
            "goal": "Tsit5 NFE <= and error <=", "measured": "; ".join(parts), "met": ok}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| target | goal | measured (median speed-up [min-max over rounds]) | met |",
             "|---|---|---|---|"]  # fmt: skip
    for t in rows:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {met} |")
    return "\n".join(lines) + "\n"
