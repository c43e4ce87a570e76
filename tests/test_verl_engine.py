"""NTLFSDPEngine (real verl 0.9.1 FSDP engine on CPU): digit outputs aligned with response tokens, in both layouts, on
the single pass (``fused_actor`` on: log-prob, entropy and digits from one ``fused_logprob_entropy_ntl`` call) and on
verl's own passes plus a digit pass (``fused_actor`` off), and from hidden states with verl's fused LM head."""

from types import SimpleNamespace

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp import transformer_impl
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.padding import response_from_nested

import verl_integration.engine as ntl_engine
from ntl_kernels import digit_targets
from tests.verl_cpu import (
    DIGIT_IDS,
    MARKER,
    batch_for,
    digit_rows_in_place,
    engine_has_pad_to_length,
    infer,
    new_engine,
    plant_digit_hidden,
    shared_engine,
    tiny_model_dir,
)
from verl_integration.inprocess import actor_loss
from verl_integration.request import NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, NTLRequest

PLANTED = torch.tensor([0.0, 1.0, -2.0, 3.0, 0.5, -1.0, 2.0, 0.0, 1.5, -0.5])
PATHS = pytest.mark.parametrize("fused_actor", [True, False], ids=["single_pass", "verl_passes"])
LAYOUTS = pytest.mark.parametrize("use_remove_padding", [True, False], ids=["remove_padding", "padded"])

# sample 0: a marker and digits in the prompt, a marker inside the response; sample 1: a response that starts with it
PROMPTS = [[MARKER, 16, 17], [300]]
RESPONSES = [[18, MARKER, 19, 20], [MARKER, 21]]
TEMPERATURES = torch.tensor([1.0, 2.0])


def request(fused_actor="auto", loss_method="nll", **options) -> NTLRequest:
    return NTLRequest(digit_ids=DIGIT_IDS, loss_method=loss_method, fused_actor=fused_actor, **options)


def padded_targets(responses):
    width = max(len(r) for r in responses)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    return digit_targets(ids, torch.tensor(DIGIT_IDS))


def response_rows(model_output, batch, key):
    """Per sample, the output ``key`` at each response token (``digit_log_probs``: NaN at non-number tokens)."""
    if key == "digit_log_probs":
        return digit_rows_in_place(model_output[key], batch)
    return [row for row in response_from_nested(model_output[key], batch["response_mask"]).unbind()]


def check_planted_distribution(output, batch, temperatures=TEMPERATURES):
    """The marker's planted digit logits appear at the row of the token after the marker, scored at the sample's
    temperature; prompt digits never count."""
    digit_rows = response_rows(output, batch, "digit_log_probs")
    ntl_rows = response_rows(output, batch, "ntl")

    # the marker is response token 1 of sample 0: its logits generated response token 2 (digit 4)
    expected0 = torch.log_softmax(PLANTED / temperatures[0], -1)
    torch.testing.assert_close(digit_rows[0][2], expected0, rtol=0, atol=1e-6)
    for k in (0, 1, 3):
        assert not torch.allclose(digit_rows[0][k], expected0, atol=1e-3)
    torch.testing.assert_close(ntl_rows[0][2], -expected0[4], rtol=0, atol=1e-5)
    # the row of response token 1 (the marker, not a digit) has no target: NTL 0
    assert ntl_rows[0][1] == 0
    # sample 1: the marker is response token 0, its row generated token 1 (digit 6), at its own temperature
    expected1 = torch.log_softmax(PLANTED / temperatures[1], -1)
    torch.testing.assert_close(digit_rows[1][1], expected1, rtol=0, atol=1e-6)
    torch.testing.assert_close(ntl_rows[1][1], -expected1[6], rtol=0, atol=1e-5)

    # prompt digits (16, 17 in sample 0) never count: every NTL value outside response rows is exactly 0
    full = output["ntl"].unbind()
    assert torch.all(full[0][:2] == 0) and full[0][-1] == 0
    assert full[0][2] != 0  # row of the last prompt token generated response token 0 (digit 3)
    # kept at the rows of the response's number tokens only: 18, 19, 20 of sample 0
    assert output["digit_log_probs"].unbind()[0].shape == (3, 10)


@PATHS
@LAYOUTS
def test_planted_digit_distribution_scores_the_token_after_it(use_remove_padding, fused_actor):
    engine = shared_engine(use_remove_padding=use_remove_padding)
    batch = batch_for(engine, PROMPTS, RESPONSES, temperature=TEMPERATURES,
                      **{NTL_TARGETS_KEY: padded_targets(RESPONSES)})
    request(fused_actor).attach(batch)
    handle = plant_digit_hidden(engine, PLANTED)
    try:
        output = infer(engine, batch)
    finally:
        handle.remove()
    check_planted_distribution(output, batch)


@PATHS
def test_remove_padding_padded_dynamic_and_bucket_padded_batches_agree(fused_actor):
    prompts = [[101, 15, 16], [102], [103, 104, 105, 106], [107, 17]]
    responses = [[18, 220, 19, 20, 21], [22, 23], [24, 15, 16, 220], [17]]
    fields = {NTL_TARGETS_KEY: padded_targets(responses)}
    temperatures = torch.tensor([1.0, 0.7, 1.3, 2.0])
    outputs = []  # response rows only: each sample's last row is scored against whatever follows it in the pack
    layouts = [{"use_remove_padding": True}, {"use_remove_padding": False},
               {"use_remove_padding": True, "use_dynamic_bsz": True, "max_token_len": 8}]
    if engine_has_pad_to_length():
        layouts.append({"use_remove_padding": True, "pad_to_length": True, "pad_to_length_bucket": 16})
    for options in layouts:
        engine = shared_engine(**options)
        batch = request(fused_actor).attach(batch_for(engine, prompts, responses, temperature=temperatures, **fields))
        output = infer(engine, batch)
        outputs.append({key: torch.cat(response_rows(output, batch, key)) for key in output.keys()})
    reference = outputs[0]
    assert reference["ntl"].count_nonzero() == 10  # every response digit has a target and a positive NTL
    for other in outputs[1:]:
        for key in ("log_probs", "digit_log_probs", "ntl"):
            torch.testing.assert_close(other[key], reference[key], rtol=0, atol=2e-5, equal_nan=True)


@PATHS
def test_digit_log_probs_match_a_plain_hugging_face_forward(fused_actor):
    from transformers import AutoModelForCausalLM

    prompts, responses = [[101, 15], [102, 103, 104]], [[16, 17, 220], [18]]
    engine = shared_engine(use_remove_padding=True)
    batch = request(fused_actor).attach(batch_for(engine, prompts, responses, temperature=0.8))
    output = infer(engine, batch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), torch_dtype=torch.float32)
    for sample, (prompt, response) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0]
        # logits at position t generated token t + 1: the response is generated by rows P-1 .. P+R-2
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1][:, list(DIGIT_IDS)] / 0.8, -1)
        actual = response_rows(output, batch, "digit_log_probs")[sample]
        is_number = torch.isin(torch.tensor(response), torch.tensor(DIGIT_IDS))
        assert is_number.any() and actual[~is_number].isnan().all()
        torch.testing.assert_close(actual[is_number], expected[is_number], rtol=0, atol=1e-5)


def test_a_batch_without_request_gets_plain_verl_outputs():
    engine = shared_engine(use_remove_padding=True)
    prompts, responses = [[101, 15], [102]], [[16, 17], [18, 220]]

    def batch(ntl_request=None):
        data = batch_for(engine, prompts, responses, temperature=0.9)
        tu.assign_non_tensor(data, calculate_entropy=True)
        return ntl_request.attach(data) if ntl_request else data

    plain = infer(engine, batch())
    assert set(plain.keys()) == {"log_probs", "entropy"}
    verl_passes = infer(engine, batch(request(False)))
    for key in ("log_probs", "entropy"):
        assert torch.equal(plain[key].values(), verl_passes[key].values())  # verl's own passes, untouched
    single_pass = infer(engine, batch(request(True)))
    assert set(single_pass.keys()) == {"log_probs", "entropy", "digit_log_probs"}
    for key in ("log_probs", "entropy"):
        torch.testing.assert_close(single_pass[key].values(), plain[key].values(), rtol=1e-6, atol=1e-5)


def test_ntl_is_on_by_default_through_the_single_pass(monkeypatch):
    """The default request ("auto") never runs verl's log-prob or entropy functions: one fused call per micro-batch
    (where the op's Triton kernels run: CUDA, or here the CPU under TRITON_INTERPRET=1)."""
    engine = shared_engine(use_remove_padding=True, use_dynamic_bsz=True, max_token_len=8)
    calls = []
    real_op = ntl_engine.fused_logprob_entropy_ntl

    def spy(logits, *args, **kwargs):
        calls.append(tuple(logits.shape))
        return real_op(logits, *args, **kwargs)

    def verl_pass_called(*args, **kwargs):
        raise AssertionError("verl's own log-prob/entropy pass ran on an NTL batch with the default request")

    monkeypatch.setattr(ntl_engine, "fused_logprob_entropy_ntl", spy)
    monkeypatch.setattr(transformer_impl, "logprobs_from_logits", verl_pass_called)
    monkeypatch.setattr(engine, "compute_entropy_from_logits", verl_pass_called)
    assert NTLRequest(digit_ids=DIGIT_IDS).fused_actor == "auto"
    batch = NTLRequest(digit_ids=DIGIT_IDS).attach(
        batch_for(engine, [[101, 15], [102], [103]], [[16, 17], [18, 220], [19]])
    )
    tu.assign_non_tensor(batch, calculate_entropy=True)
    output = infer(engine, batch)
    assert len(calls) >= 2 and all(shape[-1] == 151936 for shape in calls)  # the full vocabulary, once per micro-batch
    assert set(output.keys()) == {"log_probs", "entropy", "digit_log_probs"}

    # Where the Triton kernels do not run (a CPU without the interpreter) "auto" keeps verl's passes: the op's
    # plain-torch reference would be no lighter than them.
    monkeypatch.undo()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(ntl_engine, "fused_logprob_entropy_ntl", verl_pass_called)
    assert set(infer(engine, batch).keys()) == {"log_probs", "entropy", "digit_log_probs"}


def test_fused_actor_true_refuses_what_the_single_pass_cannot_compute_and_auto_falls_back():
    engine = shared_engine(use_remove_padding=True)

    def batch(fused_actor):
        data = request(fused_actor).attach(batch_for(engine, [[101, 15], [102]], [[16, 17], [18]]))
        tu.assign_non_tensor(data, calculate_sum_pi_squared=True)
        return data

    with pytest.raises(ValueError, match="ntl.fused_actor=true.*calculate_sum_pi_squared"):
        infer(engine, batch(True))
    output = infer(engine, batch("auto"))
    assert {"log_probs", "sum_pi_squared", "digit_log_probs"} <= set(output.keys())


@LAYOUTS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_pass_equals_verls_own_functions_on_the_same_logits(dtype, use_remove_padding):
    """verl's ``FSDPEngineWithLMHead.prepare_model_outputs`` and ours on the same logits (per-sample temperatures 0.7
    and 1.3, logits ~ N(0, 3^2) over the 151,936-token vocabulary), both against the float64 value of the same
    quantities of the same logits.

    Ours is the float64 value to float32 rounding (1e-5, and never further from it than verl's; gradients within a
    few roundings in the logits' dtype). Stated tolerance of ours against verl's: fp32 log-probs 1e-5, entropy 1e-3 (verl's
    ``logsumexp - sum(p * x)`` loses ~3e-4 to cancellation here), gradients 1e-4; bf16 logits 0.1 for log-probs,
    entropy and gradients (verl rounds ``logits / T``, its softmax and its entropy to bf16; we compute in fp32).
    """
    engine = shared_engine(use_remove_padding=use_remove_padding)
    prompts, responses = [[101, 15, 16], [102]], [[17, 220, 18], [19, 20]]
    temperatures = torch.tensor([0.7, 1.3])

    def micro_batch(ntl_request=None):
        data = batch_for(engine, prompts, responses, temperature=temperatures)
        tu.assign_non_tensor(data, calculate_entropy=True)
        return ntl_request.attach(data) if ntl_request else data

    plain = micro_batch()
    _, output_args = engine.prepare_model_inputs(plain)
    lengths = plain["input_ids"].offsets().diff()
    shape = (1, int(lengths.sum()), 151936) if use_remove_padding else (len(prompts), int(lengths.max()), 151936)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=generator) * 3).to(dtype)
    weights = torch.randn(2, int(lengths.sum()), generator=generator, dtype=torch.float64)

    def objective(log_probs, entropy):
        return (weights[0] * log_probs).sum() + (weights[1] * entropy).sum()

    def outputs(prepare, data):
        leaf = logits.clone().requires_grad_()
        result = prepare(SimpleNamespace(logits=leaf.clone()), output_args, data, None)
        log_probs, entropy = result["log_probs"].values(), result["entropy"].values()
        (gradient,) = torch.autograd.grad(objective(log_probs.double(), entropy.double()), leaf)
        return log_probs.detach().double(), entropy.detach().double(), gradient.double()

    def exact():
        leaf = logits.double().requires_grad_()
        valid = torch.arange(shape[1]) < lengths.unsqueeze(1)
        rows = leaf[0] if use_remove_padding else leaf[valid]
        x = rows / temperatures.double().repeat_interleave(lengths).unsqueeze(-1)
        log_softmax = torch.log_softmax(x, -1)
        labels = output_args["input_ids_rmpad_rolled"][: rows.shape[0]]
        log_probs = log_softmax.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        (gradient,) = torch.autograd.grad(objective(log_probs, entropy), leaf)
        return log_probs.detach(), entropy.detach(), gradient

    verl = outputs(lambda *args: FSDPEngineWithLMHead.prepare_model_outputs(engine, *args), plain)
    ours = outputs(engine.prepare_model_outputs, micro_batch(request(True)))
    tolerances = {torch.float32: (1e-5, 1e-3, 1e-4), torch.bfloat16: (0.1, 0.1, 0.1)}[dtype]
    exact_values = exact()
    for mine, theirs, value in zip(ours[:2], verl[:2], exact_values[:2], strict=True):  # log-probs, entropy
        ours_error = (mine - value).abs().max()
        assert ours_error <= 1e-5 and ours_error <= (theirs - value).abs().max() + 1e-7
    gradient_rounding = 8 * torch.finfo(dtype).eps * exact_values[2].abs().max()
    assert (ours[2] - exact_values[2]).abs().max() <= gradient_rounding
    for mine, theirs, tolerance in zip(ours, verl, tolerances, strict=True):
        assert (mine - theirs).abs().max() <= tolerance


def zero_grad_forward_backward(engine, batch, loss):
    """One forward + backward of verl's ``forward_backward_batch`` from zero gradients; returns (outputs, grads)."""
    with engine.train_mode():  # which zeroes the gradients on exit
        engine.optimizer_zero_grad()
        output = engine.forward_backward_batch(batch, loss, forward_only=False)
        grads = [p.grad.full_tensor().clone() for p in engine.module.parameters()]
    return output, grads


def training_batch(engine, ntl_request, prompts, responses, seed=0, **settings):
    width = max(len(r) for r in responses)
    generator = torch.Generator().manual_seed(seed)
    batch = batch_for(
        engine, prompts, responses, temperature=torch.tensor([0.9, 1.2, 1.0, 0.8][: len(prompts)]),
        old_log_probs=-torch.rand(len(responses), width, generator=generator) - 5.0,
        advantages=torch.randn(len(responses), width, generator=generator),
        **{NTL_TARGETS_KEY: padded_targets(responses)},
    )
    tu.assign_non_tensor(batch, global_batch_size=len(responses), calculate_entropy=True, return_model_output=True,
                         **settings)
    return ntl_request.attach(batch)


@LAYOUTS
def test_single_pass_and_verl_passes_give_the_same_outputs_and_gradients(use_remove_padding):
    """The same training batch (PPO loss with an entropy bonus + NTL loss) through both paths of one engine."""
    engine = new_engine(use_remove_padding=use_remove_padding, micro_batch_size=2)
    prompts = [[101, 15, 16], [102], [103, 17], [104]]
    responses = [[18, 220, 19], [20, 21], [22, 220, 23, 24], [15, 16]]
    loss = actor_loss(entropy_coeff=0.01)
    results = {}
    for fused_actor in (True, False):
        batch = training_batch(engine, request(fused_actor, loss_coef=1.0, loss_method="was"), prompts, responses)
        results[fused_actor] = zero_grad_forward_backward(engine, batch, loss)
    (single_output, single_grads), (verl_output, verl_grads) = results[True], results[False]
    assert single_output["loss"] == pytest.approx(verl_output["loss"], rel=1e-6)
    for name in ("actor/ntl_loss", "actor/pg_loss", "actor/entropy_loss"):
        assert float(single_output["metrics"][name].aggregate()) == pytest.approx(
            float(verl_output["metrics"][name].aggregate()), rel=1e-6)
    for key in ("log_probs", "entropy", "digit_log_probs", "ntl"):
        torch.testing.assert_close(single_output["model_output"][key].values(),
                                   verl_output["model_output"][key].values(), rtol=1e-6, atol=1e-5)
    assert any(g.abs().max() > 0 for g in verl_grads)
    for single, verl in zip(single_grads, verl_grads, strict=True):
        torch.testing.assert_close(single, verl, rtol=1e-4, atol=1e-7)


@LAYOUTS
def test_verl_fused_lm_head_gives_the_digit_outputs_of_the_logits_path(use_remove_padding):
    """verl's fused LM head (``use_fused_kernels``, its default torch backend, which runs on the CPU): log-prob and
    entropy from verl's kernel, digits and NTL from the hidden states; outputs and gradients equal the logits path's
    on the same model and batch."""
    fused_head = new_engine(use_remove_padding=use_remove_padding, use_fused_kernels=True)
    logits_path = new_engine(use_remove_padding=use_remove_padding)
    prompts, responses = [[101, 15, 16], [102]], [[18, 220, 19], [20, 21]]
    loss = actor_loss(entropy_coeff=0.01)
    ntl_request = request("auto", loss_coef=1.0, loss_method="mse")
    results = [
        zero_grad_forward_backward(engine, training_batch(engine, ntl_request, prompts, responses, temperature=0.8),
                                   loss)
        for engine in (fused_head, logits_path)
    ]
    (head_output, head_grads), (logits_output, logits_grads) = results
    batch = training_batch(fused_head, ntl_request, prompts, responses)
    for key in ("log_probs", "entropy", "digit_log_probs", "ntl"):
        # response rows: in the padded layout verl's fused head scores each sample's last row against padding
        torch.testing.assert_close(torch.cat(response_rows(head_output["model_output"], batch, key)),
                                   torch.cat(response_rows(logits_output["model_output"], batch, key)),
                                   rtol=1e-5, atol=1e-5, equal_nan=True)
    assert float(head_output["metrics"]["actor/ntl_loss"].aggregate()) > 0
    for head, logits in zip(head_grads, logits_grads, strict=True):
        # within 1e-4 of each parameter's largest gradient: the LM head's product rounds differently in verl's fused
        # head, and the tiny random model's norms amplify fp32 rounding to ~3e-5 of it
        torch.testing.assert_close(head, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))


@LAYOUTS
def test_verl_fused_lm_head_planted_distribution_scores_the_token_after_it(use_remove_padding):
    """The hidden-state path keeps verl's alignment: no off-by-one, prompt digits excluded (verl's fused head takes
    one temperature for the batch)."""
    engine = shared_engine(use_remove_padding=use_remove_padding, use_fused_kernels=True)
    batch = batch_for(engine, PROMPTS, RESPONSES, temperature=1.5, **{NTL_TARGETS_KEY: padded_targets(RESPONSES)})
    request().attach(batch)
    handle = plant_digit_hidden(engine, PLANTED)
    try:
        output = infer(engine, batch)
    finally:
        handle.remove()
    check_planted_distribution(output, batch, temperatures=torch.tensor([1.5, 1.5]))


# A number-token set beyond the digits (as Llama-3's '0'..'999'): the 10 digits and 100 two-digit "tokens"
# (ids 2000..2099 of the tiny model's vocabulary stand for '00'..'99').
PAIR_TEXTS = tuple(str(d) for d in range(10)) + tuple(f"{n:02d}" for n in range(100))
PAIR_IDS = tuple(DIGIT_IDS) + tuple(range(2000, 2100))


@PATHS
def test_a_number_token_set_of_110_tokens_reads_its_columns_at_number_rows_only(fused_actor):
    """K = 110: ``digit_log_probs`` is nested ``[B, m, 110]`` at the rows of each response's number tokens only, equal
    to a plain Hugging Face forward's log-softmax over the 110 columns; the per-token NTL scores values (was against
    a 2-digit target's value) with the targets' place weights."""
    from transformers import AutoModelForCausalLM

    from ntl_kernels import ntl_loss_reference

    prompts = [[101, 15], [102, 103]]
    responses = [[2012, 220, 17, 2099], [18, 300]]  # sample 0: '12', ' ', '2', '99'; sample 1: '3', other
    targets = torch.tensor([[44, -100, 2, 109], [3, -100, -100, -100]])  # slots: '34', -, '2', '99'; '3
    weights = torch.tensor([[2.0, 1.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    engine = shared_engine(use_remove_padding=True)
    ntl_request = NTLRequest(digit_ids=PAIR_IDS, number_texts=PAIR_TEXTS, loss_method="was", fused_actor=fused_actor)
    batch = batch_for(engine, prompts, responses, temperature=0.8,
                      **{NTL_TARGETS_KEY: targets, NTL_WEIGHTS_KEY: weights})
    output = infer(engine, ntl_request.attach(batch))
    rows = output["digit_log_probs"].unbind()
    assert [tuple(r.shape) for r in rows] == [(3, 110), (1, 110)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), torch_dtype=torch.float32)
    values = torch.tensor([float(int(text)) for text in PAIR_TEXTS])
    ntl = response_rows(output, batch, "ntl")
    for sample, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0][len(prompt) - 1: -1]
        is_number = torch.isin(torch.tensor(response), torch.tensor(PAIR_IDS))
        expected = torch.log_softmax(logits[:, list(PAIR_IDS)] / 0.8, -1)[is_number]
        torch.testing.assert_close(rows[sample], expected, rtol=0, atol=1e-5)
        width = len(response)
        expected_ntl = ntl_loss_reference(
            logits / 0.8, targets[sample, :width], torch.tensor(PAIR_IDS), method="was", reduction="none",
            number_values=values,
        )[0] * weights[sample, :width]
        torch.testing.assert_close(ntl[sample], expected_ntl, rtol=0, atol=1e-4)
