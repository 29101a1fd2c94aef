# Two commands do all setup on a fresh machine:
#   make demo   — the paper's protocol on MNIST-1D through `flwr run .` (100 clients, 11 AL rounds)
#   make test   — the test suite
# Both create .venv and install from requirements.txt under constraints.txt (torch is pinned:
# an unpinned torch would pull GBs of CUDA wheels).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export RAY_USAGE_STATS_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

.PHONY: install demo test mutate bench bench-selection bench-vision report clean

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fedal run --supernodes 100 $(if $(RUN_CONFIG),--run-config "$(RUN_CONFIG)")

test: install
	$(PY) -m pytest -q

# Mutation testing of the code that guards paid labels, budgets and state (tools/mutate.py,
# [tool.fedal.mutate] in pyproject.toml); not part of make test. Bounded by MUTATE_BUDGET_S
# (wall seconds, default 3600) and incremental: the next run goes on where one stopped. Writes
# reports/mutation/README.md.
mutate: install
	$(PIP) mutmut
	nice -n 10 $(PY) -m tools.mutate

bench-selection: install
	$(PY) -m simulations.benchmarks.bench_selection

bench-vision: install
	$(PY) -m simulations.benchmarks.bench_vision

clean:
	rm -rf $(VENV) .flwr .pytest_cache
