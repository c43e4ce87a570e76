"""``ntl.response_rows_only``: NTLFSDPEngine's LM head, logits and passes over them on the response rows only (real
verl 0.9.1 FSDP engine on CPU).

Per class of batch (both layouts, ``pad_to_length``, dynamic batch size; NTL off, the single pass, verl's passes,
verl's fused LM head; training step and ``old_log_prob``): the LM head runs on exactly the scored rows, and the
outputs on them and the gradients equal those of every row; the other rows are 0. The rows verl's loss reads are
found from verl's own mask shapes (prefix, holed by tool spans, empty, all-ones responses; nested and left/right
padded batches). A batch whose outputs may be read on prompt rows keeps every row under ``auto`` and is refused
under ``true``.
"""

import functools

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import sft_loss
from verl.workers.utils.padding import left_right_2_no_padding

from tests.test_verl_engine import padded_targets, request, zero_grad_forward_backward
from tests.verl_cpu import (DIGIT_IDS, batch_for, digit_rows_in_place, engine_has_pad_to_length, infer, shared_engine,
                             tiny_model_dir)
from verl_integration.config import NTLSettings
from verl_integration.engine import scored_rows
from verl_integration.inprocess import actor_loss, engine_settings
from verl_integration.request import NTL_TARGETS_KEY, RESPONSE_ROWS_KEY

PROMPTS = [[101, 15, 16, 102, 103], [104], [105, 17, 106], [107, 108]]
RESPONSES = [[18, 220, 19], [20, 21, 22, 23], [22, 220], [15, 16, 17]]
ENGINES = {  # verl's layouts and micro-batching: (engine options, batch settings)
    "remove_padding": ({"use_remove_padding": True}, {}),
    "padded": ({"use_remove_padding": False}, {}),
    # verl's worker copies the engine's use_dynamic_bsz into each batch, where the micro-batching reads it
    "dynamic_bsz": ({"use_remove_padding": True}, {"use_dynamic_bsz": True, "max_token_len_per_gpu": 12}),
    "pad_to_length": ({"use_remove_padding": True, "pad_to_length": True, "pad_to_length_bucket": 16}, {}),
}
PATHS = {  # NTL off (the reference policy, plain verl batches), the single pass, verl's passes + digits
    "ntl_off": None,
    "single_pass": True,
    "verl_passes": False,
}


def assert_gradients_close(mine, theirs):
    """Gradients within 1e-4 of each parameter's largest one (+ 1e-7): the LM head's product rounds differently on
    k rows than on n (another matmul kernel), and the tiny random model's norms amplify fp32 rounding to ~3e-5 of
    it."""
    assert any(g.abs().max() > 0 for g in theirs)
    for mine_grad, their_grad in zip(mine, theirs, strict=True):
        torch.testing.assert_close(mine_grad, their_grad, rtol=1e-4,
                                   atol=1e-4 * float(their_grad.abs().max()) + 1e-7)


class LMHeadRows:
    """Counts the rows the LM head multiplies in each forward (a forward hook on the output embedding)."""

    def __init__(self, engine):
        self.rows = []
        self.handle = engine.module.get_output_embeddings().register_forward_hook(
            lambda module, args, output: self.rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def rl_batch(engine, fused_actor, response_rows_only, temperature=torch.tensor([0.9, 1.2, 1.0, 0.8]), **settings):
    width = max(len(r) for r in RESPONSES)
    generator = torch.Generator().manual_seed(0)
    batch = batch_for(
        engine, PROMPTS, RESPONSES, temperature=temperature,
        old_log_probs=-torch.rand(len(RESPONSES), width, generator=generator) - 5.0,
        advantages=torch.randn(len(RESPONSES), width, generator=generator),
        **{NTL_TARGETS_KEY: padded_targets(RESPONSES)},
    )
    tu.assign_non_tensor(batch, global_batch_size=len(RESPONSES), calculate_entropy=True, return_model_output=True,
                         **{RESPONSE_ROWS_KEY: response_rows_only}, **settings)
    if fused_actor is not None:
        request(fused_actor, loss_coef=1.0, loss_method="was").attach(batch)
    return batch


def split(output, batch):
    """(response-row values, every other row's values) of each nested output, both flattened;
    ``digit_log_probs`` are kept at the responses' number rows only: all of them are response rows."""
    scored = scored_rows(batch["input_ids"].offsets().diff(), batch["responses"].offsets().diff())
    return {key: (value.values(), value.values()[:0]) if key == "digit_log_probs"
            else (value.values()[scored], value.values()[~scored]) for key, value in output.items()}


# every path on remove-padding; each other layout once per path at least
CASES = [("remove_padding", "ntl_off"), ("remove_padding", "single_pass"), ("remove_padding", "verl_passes"),
         ("padded", "single_pass"), ("dynamic_bsz", "ntl_off"), ("pad_to_length", "single_pass")]


@pytest.mark.parametrize(("layout", "path"), CASES, ids=[f"{layout}-{path}" for layout, path in CASES])
def test_response_rows_only_equals_every_row_on_the_scored_rows(layout, path, monkeypatch):
    if layout == "pad_to_length" and not engine_has_pad_to_length():
        pytest.skip("this verl's engine has no pad_to_length (added in verl 0.9.0)")
    """The single pass runs the op's plain-torch reference here (``fused_actor=true`` without the interpreter): the
    engine's rows are what is tested, and the Triton kernels under the interpreter would take minutes per case;
    ``test_verl_engine.py`` runs them inside the engine (response rows only by default)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    engine_options, settings = ENGINES[layout]
    engine = shared_engine(micro_batch_size=2, **engine_options)
    loss = actor_loss(entropy_coeff=0.01)
    num_scored = sum(len(r) for r in RESPONSES)
    results = {}
    for rows_only in (False, True):
        with LMHeadRows(engine) as lm_head:
            train = zero_grad_forward_backward(engine, rl_batch(engine, PATHS[path], rows_only, **settings), loss)
            old_log_prob = infer(engine, rl_batch(engine, PATHS[path], rows_only, **settings))
        results[rows_only] = train, old_log_prob, lm_head.rows
    (every_train, every_grads), every_infer, every_rows = results[False]
    (only_train, only_grads), only_infer, only_rows = results[True]

    assert sum(only_rows) == 2 * num_scored and sum(every_rows) > 2 * num_scored  # training step + old_log_prob
    assert only_train["loss"] == pytest.approx(every_train["loss"], rel=1e-6)
    batch = rl_batch(engine, PATHS[path], True)
    for every, only in ((every_train["model_output"], only_train["model_output"]), (every_infer, only_infer)):
        expected_keys = {"log_probs", "entropy"} | ({"digit_log_probs", "ntl"} if path != "ntl_off" else set())
        assert expected_keys <= set(only.keys()) and set(only.keys()) == set(every.keys())
        every, only = split(every, batch), split(only, batch)
        for key in every:
            torch.testing.assert_close(only[key][0], every[key][0], rtol=1e-5, atol=1e-5)
            assert torch.all(only[key][1] == 0), f"{key}: rows outside the responses must be 0"
    assert_gradients_close(only_grads, every_grads)


def test_verl_fused_lm_head_cuts_its_hidden_states_to_the_scored_rows():
    """verl's fused LM head (``use_fused_kernels``, its torch backend): the hidden states reach verl's kernel and
    ``digit_ntl_from_hidden`` cut to the scored rows; outputs and gradients equal those of every row."""
    engine = shared_engine(use_remove_padding=True, use_fused_kernels=True)
    loss = actor_loss(entropy_coeff=0.01)
    kernel_rows = []
    module_forward = engine.module.forward

    def counting_forward(*args, **kwargs):
        output = module_forward(*args, **kwargs)
        kernel_rows.append(output.log_probs.numel())
        return output

    engine.module.forward = counting_forward
    try:
        every, every_grads = zero_grad_forward_backward(engine, rl_batch(engine, "auto", False, temperature=0.8), loss)
        only, only_grads = zero_grad_forward_backward(engine, rl_batch(engine, "auto", True, temperature=0.8), loss)
    finally:
        engine.module.forward = module_forward  # the shared engine's own fused forward (tests/verl_cpu.new_engine)
    half = len(kernel_rows) // 2  # every row's micro-batches, then the response rows'
    assert sum(kernel_rows[half:]) == sum(len(r) for r in RESPONSES)
    assert sum(kernel_rows[:half]) == sum(len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES, strict=True))
    batch = rl_batch(engine, "auto", True)
    every, only = split(every["model_output"], batch), split(only["model_output"], batch)
    assert set(only) == {"log_probs", "entropy", "digit_log_probs", "ntl"}
    for key in every:
        torch.testing.assert_close(only[key][0], every[key][0], rtol=1e-5, atol=1e-5)
        assert torch.all(only[key][1] == 0)
    assert_gradients_close(only_grads, every_grads)


def sft_batch(engine, response_rows_only):
    batch = rl_batch(engine, None, response_rows_only)
    sequence_lengths = batch["input_ids"].offsets().diff()
    batch["loss_mask"] = torch.nested.nested_tensor_from_jagged(
        torch.ones(int(sequence_lengths.sum()), dtype=torch.long), batch["input_ids"].offsets())
    return batch


def test_a_batch_that_reads_prompt_rows_is_refused_under_true_and_keeps_every_row_under_auto():
    engine = shared_engine(micro_batch_size=2, use_remove_padding=True)
    sft = functools.partial(sft_loss, config=FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_mini_batch_size=1,
                                                              use_dynamic_bsz=True))
    with pytest.raises(ValueError, match="response_rows_only=true.*sft_loss"):
        zero_grad_forward_backward(engine, sft_batch(engine, True), sft)
    with LMHeadRows(engine) as lm_head:
        zero_grad_forward_backward(engine, sft_batch(engine, "auto"), sft)
    assert sum(lm_head.rows) == sum(len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES, strict=True))

    distillation = rl_batch(engine, None, True, distillation_use_topk=True)
    with pytest.raises(ValueError, match="response_rows_only=true.*distillation_use_topk"):
        infer(engine, distillation)
    with pytest.raises(ValueError, match="ntl_response_rows_only"):
        infer(engine, rl_batch(engine, None, "yes"))
    with pytest.raises(ValueError, match="ntl.response_rows_only"):
        NTLSettings(response_rows_only="always")
    assert NTLSettings().response_rows_only == "auto"


# verl's mask shapes (issue 16). Each case: prompts, responses, response_mask (1 = the model's own token, 0 = a
# tool span or padding inside the response; attention_mask stays 1 over the whole response).
MASK_CASES = {
    "all_ones": ([[101, 15], [102, 103, 104]], [[16, 17, 220], [18]], [[1, 1, 1], [1]]),
    "prefix": ([[101, 15], [102]], [[16, 17, 220, 19], [18, 20]], [[1, 1, 0, 0], [1, 0]]),
    "holed": ([[101, 15], [102, 103]], [[16, 300, 301, 17, 18], [19, 302, 20]], [[1, 0, 0, 1, 1], [1, 0, 1]]),
    "empty_response": ([[101, 15, 16], [102, 103]], [[], [17, 18]], [[], [1, 1]]),
}


def mask_batch(engine, prompts, responses, response_mask, padded_layout):
    """The batch verl's trainer gives the engine: nested (v1 trainer), or left-padded prompts and right-padded
    responses through verl's ``left_right_2_no_padding`` (padded ``responses`` / ``response_mask`` /
    ``attention_mask`` beside the nested ``input_ids``)."""
    if not padded_layout:
        batch = batch_for(engine, prompts, responses, temperature=0.8)
        batch["response_mask"] = torch.nested.as_nested_tensor(
            [torch.tensor(m, dtype=torch.long) for m in response_mask], layout=torch.jagged)
        return batch
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))
    left = [[0] * (width_p - len(p)) + p for p in prompts]
    right = [r + [0] * (width_r - len(r)) for r in responses]
    attention = [[0] * (width_p - len(p)) + [1] * (len(p) + len(r)) + [0] * (width_r - len(r))
                 for p, r in zip(prompts, responses, strict=True)]
    positions = [[max(0, i - (width_p - len(p))) for i in range(width_p + width_r)] for p in prompts]
    data = tu.get_tensordict({
        "input_ids": torch.tensor([lp + rr for lp, rr in zip(left, right, strict=True)]),
        "attention_mask": torch.tensor(attention), "position_ids": torch.tensor(positions),
        "prompts": torch.tensor(left), "responses": torch.tensor(right),
        "response_mask": torch.tensor([m + [0] * (width_r - len(m)) for m in response_mask]),
    })
    batch = left_right_2_no_padding(data)
    tu.assign_non_tensor(batch, temperature=0.8, **engine_settings(engine))
    return batch


@pytest.mark.parametrize("padded_layout", [False, True], ids=["nested", "left_right_padded"])
@pytest.mark.parametrize("case", MASK_CASES, ids=MASK_CASES)
def test_digit_log_probs_are_right_on_every_response_row_for_verls_mask_shapes(case, padded_layout):
    """Response rows only, every mask shape: the digit log-probs of every response row with a number token (inside
    tool spans too: they are computed, verl's loss masks them) equal a plain Hugging Face forward's, and they are
    the only rows kept."""
    from transformers import AutoModelForCausalLM

    prompts, responses, response_mask = MASK_CASES[case]
    if padded_layout and not all(responses):
        pytest.skip("verl's left/right padding has no empty response (the rollout ends every response with a token)")
    engine = shared_engine(use_remove_padding=True)
    batch = mask_batch(engine, prompts, responses, response_mask, padded_layout)
    tu.assign_non_tensor(batch, **{RESPONSE_ROWS_KEY: True})
    request().attach(batch)
    with LMHeadRows(engine) as lm_head:
        output = infer(engine, batch)
    assert sum(lm_head.rows) == sum(map(len, responses))
    digit_rows = digit_rows_in_place(output["digit_log_probs"], batch)  # [R, 10] each, NaN at non-number tokens
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), torch_dtype=torch.float32)
    total = 0
    for sample, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0]
        expected = torch.log_softmax(logits[len(prompt) - 1: -1][:, list(DIGIT_IDS)] / 0.8, -1)
        is_number = torch.isin(torch.tensor(response, dtype=torch.long), torch.tensor(DIGIT_IDS))
        torch.testing.assert_close(digit_rows[sample][: len(response)][is_number], expected[is_number], rtol=0,
                                   atol=1e-5)
        total += int(is_number.sum())
    assert output["digit_log_probs"].values().shape[0] == total  # nothing outside the number rows


def test_a_micro_batch_without_scored_rows_still_runs_the_backward():
    """A micro-batch (or a Ulysses rank's slice) whose responses are all empty: the LM head runs on one placeholder
    row whose outputs are 0, so that verl's passes and the backward run as on any other micro-batch."""
    engine = shared_engine(micro_batch_size=1, use_remove_padding=True)
    prompts, responses = [[101, 15], [102, 103]], [[], [16, 17]]
    loss = actor_loss()
    results = {}
    for rows_only in (False, True):
        batch = batch_for(engine, prompts, responses, temperature=0.9, old_log_probs=-torch.ones(2, 2) * 5.0,
                          advantages=torch.ones(2, 2))
        tu.assign_non_tensor(batch, global_batch_size=2, calculate_entropy=True, return_model_output=True,
                             **{RESPONSE_ROWS_KEY: rows_only})
        with LMHeadRows(engine) as lm_head:
            results[rows_only] = zero_grad_forward_backward(engine, batch, loss), lm_head.rows
    ((only, only_grads), only_rows), ((every, every_grads), every_rows) = results[True], results[False]
    assert sorted(only_rows) == [1, 2] and sorted(every_rows) == [2, 4]  # the placeholder row; the 2 scored rows
    assert only["loss"] == pytest.approx(every["loss"], rel=1e-6)
    log_probs = only["model_output"]["log_probs"].unbind()
    assert torch.all(log_probs[0] == 0) and torch.all(log_probs[1][:1] == 0) and torch.all(log_probs[1][1:3] != 0)
    assert_gradients_close(only_grads, every_grads)
