# Everything installs into .venv from requirements/constraints.txt (torch 2.13.0 CPU from local disk, triton 3.6.0).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test e2e demo bench gpu-compile static-report

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

# The GPU-compile gate (also part of `make test`) under each supported Triton release, in throwaway folders holding
# only that triton (.gpu-compile/): writes bench/results/gpu_compile.md. Needs PyPI for the wheels, no GPU.
TRITON_RELEASES ?= 3.4.0,3.5.1,3.6.0,3.9.0
gpu-compile: venv
	env -u TRITON_INTERPRET $(PY) -m bench.gpu_compile --versions $(TRITON_RELEASES)

# Registers, occupancy, SASS per element and bytes of each kernel compiled for sm_90: bench/results/gpu_static_report.md
static-report: venv
	env -u TRITON_INTERPRET $(PY) -m bench.static_report
