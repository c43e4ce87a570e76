"""verl's real ``main_ppo`` end to end on the CPU (``run.py``, ``cpu_harness.py``, ``hf_rollout.py``)."""

PLAIN_ENV = "NTL_E2E_PLAIN"  # "1" in every process of a plain verl run: the harness does not import the NTL plug-in
