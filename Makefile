# Everything installs into .venv from requirements/constraints.txt (torch 2.13.0 CPU from local disk, triton 3.6.0).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test e2e demo bench

venv: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev,verl,demo]"
	touch $(STAMP)

# Kernels run under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA).
test: venv
	$(PY) -m pytest tests -q

# verl's real `python -m verl.trainer.main_ppo` with the NTL plug-in on the CPU (tests/e2e/), one run after another;
# `make test` runs these too
e2e: venv
	$(PY) -m pytest tests/e2e -q

demo: venv
	$(PY) -m ntl_demo

bench: venv
	$(PY) -m bench.bench_ntl_loss
