import os

import torch

# Without CUDA the Triton kernels run under the interpreter on CPU tensors; it must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
