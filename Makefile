# Everything installs into .venv from requirements/constraints.txt (torch 2.13.0 CPU from local disk, triton 3.6.0).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test e2e verl-matrix demo bench gpu-compile static-report

venv: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev,verl,demo]"
	touch $(STAMP)

# Kernels run under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA).
# Then the verl version matrix (below).
test: venv
	$(PY) -m pytest tests -q --ignore=tests/e2e
	$(PY) -m tests.verl_matrix

# NTL on every supported verl release (0.7.1, 0.8.0, 0.9.0, 0.9.1), each in a throwaway environment under
# .verl-matrix/ built from requirements/verl-matrix/<release>.txt (0.9.1: .venv): its in-process integration tests,
# the start-up refusals and verl's real main_ppo on the CPU per path and trainer mode. Writes
# bench/results/verl_matrix.md and the README's support table. VERL_RELEASES=0.8.0 checks one release.
VERL_RELEASES ?= 0.7.1,0.8.0,0.9.0,0.9.1
verl-matrix: venv
	$(PY) -m tests.verl_matrix --releases $(VERL_RELEASES)

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
