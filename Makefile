# Every target that runs code first makes sure .venv exists and is installed.
# torch is installed first, pinned through constraints.txt, so no dependency can pull a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: venv demo test lint typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_demo.py

test: $(STAMP)
	$(PY) -m ruff check lightning_autoprune tests examples benchmarks scripts
	$(PY) -m mypy lightning_autoprune benchmarks tests
	$(PY) -m pytest -n 2

lint: $(STAMP)
	$(PY) -m ruff check lightning_autoprune tests examples benchmarks scripts
	$(PY) -m ruff format --check lightning_autoprune tests examples benchmarks scripts

typecheck: $(STAMP)
	$(PY) -m mypy lightning_autoprune benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# Benchmarks (docs/architecture.md; protocol in benchmarks/protocol.py): the full protocol, the structured track (training, then latency), the automatic
# mode against fixed sweeps, the sparse export and the learned scorer at scale (numbers README.md quotes),
# then BENCHMARKS.md and benchmarks/plots/ from their results.
.PHONY: bench bench-quick

bench: $(STAMP)
	$(PY) -m benchmarks.protocol
	$(PY) -m benchmarks.structured
	$(PY) -m benchmarks.structured --latency
	$(PY) -m benchmarks.auto_target
	$(PY) -m benchmarks.sparse_export
	$(PY) -m benchmarks.importance_scale
	$(PY) -m benchmarks.compatibility
	$(PY) -m benchmarks.report

# A representative subset (digits MLP, 2 seeds, 3 sparsities, 4 methods) into results-quick/, compared
# with the committed full results; prints FLAGGED lines for metrics that moved beyond the seed spread.
bench-quick: $(STAMP)
	$(PY) -m benchmarks.protocol --quick

# The realistic tier (benchmarks/realistic.py, issue #19): MNIST-1D at scale on a 1D ResNet and a character
# GPT-2 on the stdlib sources, every method from the same dense model per seed. Resumable: a rerun skips the
# runs whose files exist. Several hours: BENCHMARKS.md states the summed wall time of the recorded fits.
# The fixed-sparsity grid runs as two single-thread jobs, one (workload, seed) unit each
# (benchmarks/parallel.py); the structured track alone, since it times latency at 1 and 2 threads.
# The automatic mode against the fixed grid (issue #20; 5 seeds) is bench-real-auto.
.PHONY: bench-real bench-real-auto bench-real-quick

bench-real: $(STAMP)
	$(PY) -m benchmarks.parallel realistic --jobs 2
	$(PY) -m benchmarks.realistic_structured --resume
	$(PY) -m benchmarks.report

bench-real-auto: $(STAMP)
	$(PY) -m benchmarks.parallel realistic_auto --jobs 2
	$(PY) -m benchmarks.report

# One seed, one sparsity per workload, dense + 3 methods, short fits on the full data, into results-quick/realistic;
# then automatic-mode AutoPrune against a dense fine-tune (8 short epochs) on each workload; then the structured reference and Torch-Pruning magnitude at 2x on the same short ResNet budget.
bench-real-quick: $(STAMP)
	$(PY) -m benchmarks.realistic --quick
	$(PY) -m benchmarks.realistic_auto --quick
	$(PY) -m benchmarks.realistic_structured --quick --out results-quick/realistic --seeds 0 --levels 0.5 \
		--methods autoprune_magnitude tp_magnitude
