"""The layering of docs/design.md, checked on the source so that it cannot decay.

Layers only look down: the core (pure JAX) <- models, training, interop <- diagnosis <- cli;
``experiments/`` and ``benchmarks/`` sit on top of the package and nothing in ``wgfm/`` imports
them, except the two commands that run them from a source checkout.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wgfm"
CORE = [
    "processes.py",
    "fields.py",
    "gmm.py",
    "losses.py",
    "transport.py",
    "results.py",
    "controllers.py",
    "_checks.py",
    "samplers.py",
    "metrics.py",
    "perturbations.py",
    "typing.py",
    "report.py",
    "figures.py",
    "diagnostics",
    "diagnosis/api.py",
    "diagnosis/asymmetry.py",
    "diagnosis/budget.py",
    "diagnosis/circulation.py",
    "diagnosis/plan.py",
    "diagnosis/claim.py",
    "diagnosis/registry.py",
    "diagnosis/sizes.py",
]
HEAVY = ("flax", "torch", "optax", "orbax", "diffusers")
# The commands that run the repository's experiments and benchmarks (they say in one line that
# they need the source checkout when wgfm is installed from a wheel).
TOP_ALLOWED = {("cli.py", "reproduce"), ("cli.py", "bench")}


def _imports(path: Path):
    """``(module imported, enclosing top-level function or None)`` for every import in ``path``,
    relative imports resolved against the package."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for top in tree.body:
        owner = top.name if isinstance(top, ast.FunctionDef | ast.ClassDef) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                out += [(a.name, owner) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(rel[: len(rel) - node.level])
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                out.append((name, owner))
    return out


def _files(entries):
    for e in entries:
        p = PACKAGE / e
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p])


@pytest.mark.parametrize("path", list(_files(CORE)), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_no_framework_and_no_interop(path):
    for name, _ in _imports(path):
        root = name.split(".")[0]
        assert root not in HEAVY, f"{path.name} imports {name}"
        assert not name.startswith(("wgfm.interop", "wgfm.models", "wgfm.train", "wgfm.cli")), (
            f"{path.name} imports {name}, a layer above the core"
        )


def test_the_diagnosis_command_looks_only_down():
    # It loads models through interop (a layer below it) and is called by the CLI (above).
    for path in sorted((PACKAGE / "diagnosis").glob("*.py")):
        for name, _ in _imports(path):
            assert not name.startswith("wgfm.cli"), f"{path.name} imports {name}"
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name}"


def test_the_package_never_imports_experiments_or_benchmarks():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, owner in _imports(path):
            if name.split(".")[0] in ("experiments", "benchmarks"):
                if (path.name, owner) not in TOP_ALLOWED:
                    found.append(f"{path.relative_to(ROOT)}: {name} (in {owner})")
    assert not found, found


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}: {node.module}.{a.name}")
    assert not found, found


# Private names of other libraries that experiments/ and benchmarks/ may use, and why.
FOREIGN_PRIVATE = {
    # PyTorch's fused multi-tensor ops, which torch.optim itself runs: the PyTorch side of the
    # training comparison does its EMA the way PyTorch's own optimisers do.
    ("torch", "_foreach_lerp_"),
}


def _private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """Private names ``path`` reaches in other modules: ``obj._name`` on anything but
    ``self``/``cls``, and ``from module import _name`` unless ``_name`` is a module of the same
    package (a package-private module, e.g. ``benchmarks/_compare.py``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            if node.attr.startswith("__") or (
                isinstance(base, ast.Name) and base.id in ("self", "cls")
            ):
                continue
            if (ast.unparse(base), node.attr) not in FOREIGN_PRIVATE:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            package = path.parent if node.level else root / (node.module or "").replace(".", "/")
            for a in node.names:
                private = a.name.startswith("_") and not a.name.startswith("__")
                if private and not (package / f"{a.name}.py").is_file():
                    found.append(f"{path.relative_to(root)}:{node.lineno}: import {a.name}")
    return found


@pytest.mark.parametrize("top", ["experiments", "benchmarks"])
def test_experiments_and_benchmarks_use_no_private_names_of_other_modules(top):
    found = [f for path in sorted((ROOT / top).rglob("*.py")) for f in _private_uses(path)]
    assert not found, found


def test_the_private_name_check_can_fail(tmp_path):
    (tmp_path / "_helper.py").write_text("")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from . import _helper\nfrom wgfm.train import _train_step\n"
        "ctx._cache[1] = step._cache_size() + torch._foreach_lerp_ + self._x\n"
    )
    found = sorted(f.split(": ")[1] for f in _private_uses(bad, tmp_path))
    # the package's own private module, torch's fused op and self's attribute are allowed
    assert found == ["ctx._cache", "import _train_step", "step._cache_size"], found


def test_importing_the_library_loads_no_framework():
    code = (
        "import sys, wgfm, wgfm.diagnostics, wgfm.diagnosis, wgfm.transport; "
        f"print(sorted(m for m in {HEAVY + ('matplotlib', 'experiments')!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
