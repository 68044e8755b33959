"""The ``wgfm`` command. Subcommands are plain typed functions dispatched by tyro."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import tyro

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

    from .check import run_check

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
    print("All identities hold to float64 rounding." if ok else "Some identities FAILED.")
    return 0 if ok else 1


def train(
    config: Annotated[
        tyro.extras.subcommand_type_from_defaults(PRESETS),  # type: ignore[valid-type]
        tyro.conf.OmitSubcommandPrefixes,
        tyro.conf.arg(name=""),
    ],
) -> int:
    """Train a network (presets: gmm2d, toy, digits, mnist --data DIR, cifar10-paper --data DIR).

    Writes a run directory with the resolved config, orbax checkpoints, metrics.jsonl and
    samples.png; ``--resume`` continues from its newest readable checkpoint."""
    from .presets import run

    run_dir = run(config)
    print(f"Run written to {run_dir}")
    return 0


COMMANDS: dict[str, Callable[..., int | None]] = {"check": check, "train": train}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    result = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="wgfm")
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
