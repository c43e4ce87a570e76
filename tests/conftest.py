import os

import torch

# Without CUDA the Triton kernels run under the interpreter on CPU tensors; it must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# verl < 0.9 on the CPU: padding helpers without flash-attn (tests/bridges.py)
from tests.bridges import bridge_flash_attn_padding  # noqa: E402

bridge_flash_attn_padding()
