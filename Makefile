# Set-up is part of both entry points, so a fresh clone needs exactly one command for each.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: repro test test-slurm bench scaling scaling-variance

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch/torchvision first, pinned, from this machine's local wheels: never another CUDA build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)  ## run the whole embedded DAG (dvc repro) and write reports/
	PATH=$(abspath $(VENV))/bin:$$PATH dvc repro

# Issue 31's study (README "Scaling study"), both stage-2 modes: ar-init first (its claims against the
# baseline, kept in reports/scaling.ar-init.json; the shared stages and the baseline arm made once),
# then fresh (the control, the guide ladder and the full reports/scaling.md beside ar-init's claims).
scaling: $(STAMP)  ## the scaling study on 2 cores: reports/scaling.md (+ html, json)
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores 2 scaling --config params=presets/scaling-arinit.yaml
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores 2 scaling --config params=presets/scaling.yaml

# The variance split (issue 31 item 4, measured once): the study with study.reseed_upstream on, so
# each ladder seed also trains its own teacher and warm-up (rows upstream-N). After `make scaling`
# it runs only those rows and the report (the key is FREE: it reruns nothing else).
SCALING_VARIANCE := .gear/scaling-variance.yaml
scaling-variance: $(STAMP)  ## the scaling study with the reseeded upstream rows: its variance split
	$(VENV)/bin/gear params --params presets/scaling.yaml --set study.reseed_upstream=true --out $(SCALING_VARIANCE)
	PATH=$(abspath $(VENV))/bin:$$PATH snakemake --cores 2 scaling --config params=$(SCALING_VARIANCE)

TESTENV := HF_HUB_OFFLINE=1 PATH=$(abspath $(VENV))/bin:$$PATH
PYTEST := $(TESTENV) $(PY) -m pytest
SLURM_TESTS := tests/test_slurm.py
TEST_WORKERS ?= 2

# The real-SLURM module runs as a second pytest beside the rest (xdist, nice 10): its DAG mostly
# waits on the plugin's status checks, and its jobs get the CPU first, since a job that ends late
# costs a whole check interval. Its output follows the rest's; either failing fails `make test`;
# an interrupt stops it cleanly (cluster, jobs and daemons).
test: $(STAMP)  ## the test suite, the real-SLURM module included (beside the rest)
	@log=$$(mktemp); \
	$(PYTEST) -q -s -p no:cacheprovider $(SLURM_TESTS) > $$log 2>&1 & slurm=$$!; \
	trap 'kill -TERM $$slurm 2>/dev/null; wait $$slurm; cat $$log; rm -f $$log; exit 130' INT TERM HUP; \
	$(TESTENV) nice -n 10 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --ignore=$(SLURM_TESTS); rest=$$?; \
	wait $$slurm; slurm_rc=$$?; trap - INT TERM HUP; \
	echo "== $(SLURM_TESTS), run beside the tests above (exit $$slurm_rc) =="; cat $$log; rm -f $$log; \
	[ $$rest -eq 0 ] && [ $$slurm_rc -eq 0 ]

test-slurm: $(STAMP)  ## only the slurm profile on a real one-node SLURM (root; ~7.5 min)
	$(PYTEST) -q -s $(SLURM_TESTS)

# bench_reference runs beside the public reference where $GEAR_REFERENCE names a checkout (README,
# Performance), and prints ours alone otherwise.
bench: $(STAMP)  ## throughput figures (printed, never asserted)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_loader.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ar.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_tokenizer.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_reference.py
