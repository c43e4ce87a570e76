"""The NTL term in verl's actor loss, trained through the real engine's train_batch on CPU, on both actor paths
(``fused_actor`` on: one pass over the logits; off: verl's passes plus a digit pass)."""

import math

import numpy as np
import pytest
import torch
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from ntl_kernels import digit_targets
from tests.verl_cpu import DIGIT_IDS, batch_for, new_engine
from verl_integration.inprocess import actor_loss
from verl_integration.request import NTL_TARGETS_KEY, RESPONSE_ROWS_KEY, NTLRequest
from verl.utils import tensordict_utils as tu

PROMPTS = [[101, 15, 16], [102], [103, 104], [105, 17]]
RESPONSES = [[18, 220, 19, 20], [21, 22], [23, 24, 15, 220], [16, 220]]
PATHS = pytest.mark.parametrize("fused_actor", [True, False], ids=["single_pass", "verl_passes"])


def training_batch(engine, responses=RESPONSES, advantages=None, seed=0):
    width = max(len(r) for r in responses)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    generator = torch.Generator().manual_seed(seed)
    fields = {
        "old_log_probs": -torch.rand(len(responses), width, generator=generator) - 5.0,
        "advantages": torch.randn(len(responses), width, generator=generator) if advantages is None else advantages,
        NTL_TARGETS_KEY: digit_targets(ids, torch.tensor(DIGIT_IDS)),
    }
    batch = batch_for(engine, PROMPTS, responses, **fields)
    tu.assign_non_tensor(batch, global_batch_size=len(responses))
    return batch


def train(engine, batch, loss):
    with engine.train_mode():
        return engine.train_batch(batch, loss_function=loss)


def parameters(engine):
    return [p.detach().clone() for p in engine.module.parameters()]


def metric(output, name):
    """A metric of train_batch aggregated over the micro-batches as verl aggregates it (a Metric, or a list of plain
    numbers: their mean)."""
    value = output["metrics"][name]
    return float(value.aggregate()) if hasattr(value, "aggregate") else float(np.mean(value))


@PATHS
def test_zero_coefficient_is_plain_ppo_loss(fused_actor):
    """Bit for bit on verl's passes; on the single pass the log-probs differ from verl's by rounding only."""
    plain, ntl = new_engine(engine_cls=FSDPEngineWithLMHead), new_engine()
    plain_out = train(plain, training_batch(plain), actor_loss())
    ntl_batch = NTLRequest(DIGIT_IDS, loss_coef=0.0, fused_actor=fused_actor).attach(training_batch(ntl))
    # every row, as the plain engine computes (response rows only rounds the smaller LM-head matmul differently;
    # tests/test_engine_response_rows.py compares the two)
    tu.assign_non_tensor(ntl_batch, **{RESPONSE_ROWS_KEY: False})
    ntl_out = train(ntl, ntl_batch, actor_loss())
    if fused_actor:
        assert ntl_out["loss"] == pytest.approx(plain_out["loss"], rel=1e-6)
        for before, after in zip(parameters(plain), parameters(ntl), strict=True):
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    else:
        assert plain_out["loss"] == ntl_out["loss"]
        for before, after in zip(parameters(plain), parameters(ntl), strict=True):
            assert torch.equal(before, after)
    assert metric(ntl_out, "actor/ntl_loss") > 0  # the term is measured, just not added


@PATHS
def test_positive_coefficient_lowers_the_ntl_loss(fused_actor):
    engine = new_engine(lr=1e-2)
    zero_advantages = torch.zeros(len(RESPONSES), max(len(r) for r in RESPONSES))
    losses = []
    for _ in range(4):
        batch = NTLRequest(DIGIT_IDS, loss_coef=1.0, loss_method="was", fused_actor=fused_actor).attach(
            training_batch(engine, advantages=zero_advantages)
        )
        output = train(engine, batch, actor_loss())
        losses.append(metric(output, "actor/ntl_loss"))
        assert 0.0 <= metric(output, "actor/ntl_digit_acc") <= 1.0
    assert losses[-1] < 0.8 * losses[0], losses


@PATHS
def test_a_batch_without_digits_gives_a_finite_loss_and_gradients(fused_actor):
    engine = new_engine()
    responses = [[220, 300], [301], [302, 303, 304, 220], [305, 220]]
    batch = NTLRequest(DIGIT_IDS, loss_coef=1.0, fused_actor=fused_actor).attach(
        training_batch(engine, responses=responses)
    )
    output = train(engine, batch, actor_loss())
    assert all(math.isfinite(loss) for loss in output["loss"])
    assert math.isfinite(float(output["metrics"]["grad_norm"]))
    assert metric(output, "actor/ntl_loss") == 0.0
    assert "actor/ntl_digit_acc" not in output["metrics"]
    assert all(torch.isfinite(p).all() for p in parameters(engine))
