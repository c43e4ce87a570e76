"""Every public op on views equals the same op on contiguous copies: values and gradients, on both paths.

A class of bugs, not a list of cases: the kernels index their inputs through pointers, so a view that the host
code hands over as if it were contiguous (``targets[:, -1]``, an ``expand``ed tensor, a slice with a step, an offset
into a larger buffer) is read wrong or past its end, and the reference path is blind to it. Hypothesis draws, for
each input of each op (logits, targets, labels, temperatures, digit ids, hidden states, LM-head weight), one
memory layout and the dimension it acts on; the unused parts of every buffer hold NaN (floats) or other values
(integers), so reading them shows. Paths: ``reference`` (plain torch, TRITON_INTERPRET=0 on CPU) and ``kernels``
(Triton: CUDA, or the interpreter on CPU).
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntl_kernels import (
    digit_logits_from_hidden,
    digit_ntl_from_hidden,
    fused_logprob_entropy_ntl,
    ntl_loss,
)

KERNELS_RUN = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PATHS = ("reference", "kernels")
OPS = (
    "ntl_loss/none", "ntl_loss/sample", "ntl_loss/mean", "fused", "fused/ntl_targets", "hidden/ntl",
    "hidden/logits",
)
# What each op reads; float inputs marked True are differentiated.
INPUTS = {
    "ntl_loss": {"logits": True, "targets": False, "digit_ids": False},
    "fused": {"logits": True, "labels": False, "digit_ids": False, "temperature": False, "ntl_targets": False},
    "hidden": {"hidden": True, "weight": True, "digit_ids": False, "temperature": False, "ntl_targets": False},
}
LAYOUTS = ("contiguous", "transposed", "stepped", "offset", "column", "expanded")
VOCAB_SIZE = 40
HIDDEN_SIZE = 8
EXAMPLES = 15


def laid_out(values: torch.Tensor, layout: str, dim: int, generator: torch.Generator) -> torch.Tensor:
    """A tensor holding ``values`` in the memory layout ``layout`` along dimension ``dim``:

    transposed: ``dim`` and the next dimension swapped in memory; stepped: every other entry of a buffer twice as
    long in ``dim`` (``x[::2]``); offset: a view starting 3 elements into its storage; column: the last entry of an
    extra trailing dimension of 3 (``x[..., -1]``, as ``targets[:, -1]``); expanded: the first slice along ``dim``
    repeated with stride 0 (so its values are that slice's).
    """
    if layout == "contiguous" or values.dim() == 0:
        return values.clone()
    if layout == "transposed":
        other = (dim + 1) % values.dim()
        return values.transpose(dim, other).contiguous().transpose(dim, other)
    if layout == "expanded":
        return values.narrow(dim, 0, 1).expand(values.shape)
    if layout == "offset":
        storage = _filler(values, (values.numel() + 3,), generator)
        view = storage[3:].view(values.shape)
    elif layout == "stepped":
        shape = list(values.shape)
        shape[dim] *= 2
        view = _filler(values, shape, generator)[(slice(None),) * dim + (slice(None, None, 2),)]
    else:  # column
        view = _filler(values, (*values.shape, 3), generator)[..., -1]
    view.copy_(values)
    return view


def _filler(values: torch.Tensor, shape, generator: torch.Generator) -> torch.Tensor:
    """The rest of a buffer: NaN for floats; for integers other entries of ``values`` (valid, but not the ones the
    view holds), so a kernel that reads the buffer as contiguous computes something else."""
    if values.dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=values.dtype, device=values.device)
    picks = torch.randint(0, values.numel(), shape, generator=generator)
    return values.reshape(-1)[picks.to(values.device)].clone()


def _values(op: str, leading: tuple, generator: torch.Generator) -> dict:
    """Contiguous inputs of ``op`` for rows ``leading``: digit targets with some ignored, labels half digits."""
    digit_ids = torch.randperm(VOCAB_SIZE, generator=generator)[:10]
    targets = torch.randint(0, 10, leading, generator=generator)
    targets[torch.rand(leading, generator=generator) < 0.25] = -100
    values = {"digit_ids": digit_ids, "targets": targets, "ntl_targets": targets}
    values["labels"] = torch.where(targets >= 0, digit_ids[targets.clamp(min=0)],
                                   torch.randint(0, VOCAB_SIZE, leading, generator=generator))
    values["labels"][torch.rand(leading, generator=generator) < 0.15] = -100
    values["temperature"] = torch.rand(leading, generator=generator) + 0.5
    values["logits"] = torch.randn(*leading, VOCAB_SIZE, generator=generator) * 3
    values["hidden"] = torch.randn(*leading, HIDDEN_SIZE, generator=generator)
    values["weight"] = torch.randn(VOCAB_SIZE, HIDDEN_SIZE, generator=generator) / HIDDEN_SIZE**0.5
    return {name: values[name].to(DEVICE) for name in INPUTS[op.split("/")[0]]}


def _outputs(op: str, inputs: dict) -> list:
    """The op's differentiable outputs (a list of tensors)."""
    family, _, variant = op.partition("/")
    if family == "ntl_loss":
        return [ntl_loss(inputs["logits"], inputs["targets"], inputs["digit_ids"], method="was", reduction=variant)]
    if family == "fused":
        out = fused_logprob_entropy_ntl(
            inputs["logits"], inputs["labels"], inputs["digit_ids"], temperature=inputs["temperature"],
            ntl_targets=inputs["ntl_targets"] if variant else None, method="mse",
        )
        return [t for t in out if t is not None]
    if variant == "logits":
        return [digit_logits_from_hidden(inputs["hidden"], inputs["weight"], inputs["digit_ids"],
                                         inputs["temperature"])]
    out = digit_ntl_from_hidden(inputs["hidden"], inputs["weight"], inputs["digit_ids"],
                                temperature=inputs["temperature"], ntl_targets=inputs["ntl_targets"], method="nll")
    return list(out)


def _run(op: str, inputs: dict, seed: int):
    """Outputs, and gradients of a random weighting of them w.r.t. the differentiated inputs."""
    differentiated = [inputs[name].requires_grad_() for name, grad in INPUTS[op.split("/")[0]].items() if grad]
    outputs = _outputs(op, inputs)
    generator = torch.Generator().manual_seed(seed)
    objective = sum((out * torch.randn(out.shape, generator=generator).to(out)).sum() for out in outputs)
    return [out.detach() for out in outputs], torch.autograd.grad(objective, differentiated)


@st.composite
def cases(draw, op: str):
    """Rows ``leading``, a seed, and one (layout, dimension) per input of ``op``."""
    leading = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    layouts = {}
    for name in INPUTS[op.split("/")[0]]:
        rank = {"digit_ids": 1, "weight": 2}.get(name, len(leading) + (name in ("logits", "hidden")))
        choices = [layout for layout in LAYOUTS if not (name == "digit_ids" and layout == "expanded")]
        layout = draw(st.sampled_from(choices))
        # expanded rows, not an expanded vocabulary or hidden size: stride 0 along a leading dimension
        last = rank - 2 if layout == "expanded" and name in ("logits", "hidden") else rank - 1
        layouts[name] = (layout, draw(st.integers(0, max(last, 0))))
    return leading, draw(st.integers(0, 2**16)), layouts


@pytest.fixture
def path(request, monkeypatch):
    if request.param == "reference":
        if torch.cuda.is_available():
            pytest.skip("the reference path runs on CPU tensors without TRITON_INTERPRET")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    elif not KERNELS_RUN:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 to run the Triton kernels")
    return request.param


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("op", OPS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_views_match_contiguous_copies(op, path, data):
    leading, seed, layouts = data.draw(cases(op))
    generator = torch.Generator().manual_seed(seed)
    values = _values(op, leading, generator)
    views = {name: laid_out(values[name], *layouts[name], generator) for name in values}
    copies = {name: view.detach().clone(memory_format=torch.contiguous_format) for name, view in views.items()}
    assert all(copy.is_contiguous() for copy in copies.values())
    outputs, grads = _run(op, views, seed)
    expected_outputs, expected_grads = _run(op, copies, seed)
    for got, expected in zip((*outputs, *grads), (*expected_outputs, *expected_grads)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, equal_nan=False)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_last_position_of_each_sample(path):
    """The case that found the class: score only ``[:, -1]`` of [B, T, V] logits (and of the hidden states)."""
    generator = torch.Generator().manual_seed(3)
    values = _values("ntl_loss", (4, 5), generator)
    logits, targets, digit_ids = values["logits"].requires_grad_(), values["targets"], values["digit_ids"]
    targets[:, -1] = torch.arange(4, device=DEVICE)
    loss = ntl_loss(logits[:, -1], targets[:, -1], digit_ids)
    expected = ntl_loss(logits[:, -1].contiguous(), targets[:, -1].contiguous(), digit_ids)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(expected, logits)[0])

    hidden = _values("hidden", (4, 5), generator)
    out = digit_ntl_from_hidden(hidden["hidden"][:, -1], hidden["weight"], digit_ids, ntl_targets=targets[:, -1])
    copy = digit_ntl_from_hidden(hidden["hidden"][:, -1], hidden["weight"], digit_ids,
                                 ntl_targets=targets[:, -1].contiguous())
    torch.testing.assert_close(out.ntl, copy.ntl)
