"""Number Token Loss for verl 0.7.x, 0.8.0 and 0.9.x: an actor that returns number-token statistics from the pass
that scores the logits (verl 0.8/0.9: the FSDP engine ``engine.NTLFSDPEngine``; verl 0.7: the legacy
``DataParallelPPOActor`` subclass ``legacy_actor.NTLDataParallelPPOActor``), an NTL term in the actor loss, and
trainers that recompute the NTL reward after old_log_prob, so the reward uses the actor's own digits (verl 0.9's v1
trainer modes ``ntl`` / ``ntl_colocate_async`` / ``ntl_separate_async``: ``trainer.py``; verl's DataProto
``RayPPOTrainer``, the ``main_ppo`` of 0.7/0.8 and ``trainer.use_v1=false`` on 0.9: ``ray_trainer.py``). What differs
between verl releases lives in ``releases/`` (one module per release line).

Turning it on in a verl run (see README.md ("NTL in verl") and examples/gsm8k/):
``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` in the environment,
``actor_rollout_ref.model.external_lib=verl_integration.plugin``, on verl 0.9 ``trainer.v1.trainer_mode=ntl`` (or an
async NTL mode), options under ``+ntl.*`` (``config.py``). Nothing registers on plain ``import verl`` or
``import verl_integration``.

In-process API (no Ray; the CPU demo and the tests use it):

- ``inprocess.build_engine(model_dir, device='cpu'|'cuda', use_remove_padding=..., use_dynamic_bsz=...,
  micro_batch_size=..., lr=..., use_fused_kernels=..., **FSDPEngineConfig fields)`` -> an initialised
  ``engine.NTLFSDPEngine`` (verl's ``FSDPEngineWithLMHead`` subclass); ``inprocess.make_batch(prompts, responses,
  temperature=..., settings=inprocess.engine_settings(engine), **padded_response_fields)`` -> the nested TensorDict
  verl's workers pass to the engine; ``inprocess.actor_loss()`` -> verl's ``partial(ppo_loss, config=ActorConfig)``.
- ``request.NTLRequest(digit_ids, number_texts, loss_coef, loss_method, fused_actor="auto").attach(batch)`` asks
  the engine for NTL outputs (by default log-probs, entropy and number-token statistics from one pass over the
  logits; see ``engine.py``); ``digit_ids`` / ``number_texts`` are ``ntl_kernels.number_tokens(tokenizer)``'s
  ``ids`` / ``texts`` (the 10 digits, or Llama-3's 1,110 tokens). ``engine.infer_batch(batch)["model_output"]`` then
  has ``digit_log_probs`` nested ``[B, m, K]`` (the rows of each response's number tokens only, in order) and, when
  the batch has ``ntl_targets``, ``ntl`` ``[B, j]`` next to ``log_probs``, row t scored against token t + 1; cut
  the response part of ``log_probs`` / ``ntl`` with verl's ``response_from_nested(x, batch["response_mask"])``.
- ``engine.train_batch(batch, loss_function=inprocess.actor_loss())`` with a request and ``ntl_targets`` (nested
  ``[B, j_response]``, slot 0..K-1 or -100; optional ``ntl_weights``, the place weights) trains ``ppo_loss +
  loss_coef * NTL`` (``loss.NTLActorLoss``); the batch needs verl's ``old_log_probs``, ``advantages`` and
  non-tensor ``global_batch_size``.
- ``reward_step.ntl_reward_step(responses=[B, R], response_mask=[B, R], digit_log_probs=[B, R, K] or the engine's
  number rows, solution_strs, ground_truths, data_sources, extra_infos, compute_score, digit_ids, tau, method,
  loss_targets, attention_mask, number_texts, loss_place_weighting)`` -> ``RewardStepResult(rm_scores [B, R],
  ntl_targets [B, R], results, metrics, ntl_weights)``: the trainer's reward step on plain padded tensors
  (``trainer.NTLPPOTrainer`` runs it between verl's old_log_prob and advantage stages).
"""
