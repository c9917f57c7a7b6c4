# Set-up is part of both entry points, so a fresh clone needs exactly one command for each.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: repro test test-slurm bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch/torchvision first, pinned, from this machine's local wheels: never another CUDA build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)  ## run the whole embedded DAG (dvc repro) and write reports/
	PATH=$(abspath $(VENV))/bin:$$PATH dvc repro

test: $(STAMP)  ## the test suite
	HF_HUB_OFFLINE=1 PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q

test-slurm: $(STAMP)  ## the slurm profile on a real one-node SLURM (root; ~11 min)
	GEAR_SLURM_TESTS=1 HF_HUB_OFFLINE=1 PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -s tests/test_slurm.py

bench: $(STAMP)  ## throughput figures (printed, never asserted)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_loader.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ar.py
