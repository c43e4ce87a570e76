"""Number Token Loss for verl 0.9.x: an FSDP engine that returns digit statistics, an NTL term in the actor loss,
and a v1 trainer that recomputes the NTL reward after old_log_prob (so the reward uses the actor's own digits).

Turning it on in a verl run (see README.md ("NTL in verl") and examples/gsm8k/):
``actor_rollout_ref.model.external_lib=verl_integration.plugin``, ``trainer.v1.trainer_mode=ntl``,
``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` in the environment, options under ``+ntl.*`` (``config.py``).
Nothing registers on plain ``import verl`` or ``import verl_integration``.

In-process API (no Ray; the CPU demo and the tests use it):

- ``inprocess.build_engine(model_dir, device='cpu'|'cuda', use_remove_padding=..., use_dynamic_bsz=...,
  micro_batch_size=..., lr=..., use_fused_kernels=..., **FSDPEngineConfig fields)`` -> an initialised
  ``engine.NTLFSDPEngine`` (verl's ``FSDPEngineWithLMHead`` subclass); ``inprocess.make_batch(prompts, responses,
  temperature=..., settings=inprocess.engine_settings(engine), **padded_response_fields)`` -> the nested TensorDict
  verl's workers pass to the engine; ``inprocess.actor_loss()`` -> verl's ``partial(ppo_loss, config=ActorConfig)``.
- ``request.NTLRequest(digit_ids, loss_coef, loss_method, fused_actor="auto").attach(batch)`` asks the engine for
  NTL outputs (by default log-probs, entropy and digits from one pass over the logits; see ``engine.py``):
  ``engine.infer_batch(batch)["model_output"]`` then has ``digit_log_probs`` ``[B, j, 10]`` (and ``ntl`` ``[B, j]``
  when the batch has ``ntl_targets``) next to ``log_probs``, row t scored against token t + 1; cut the response
  part with verl's ``response_from_nested(x, batch["response_mask"])``.
- ``engine.train_batch(batch, loss_function=inprocess.actor_loss())`` with a request and ``ntl_targets`` (nested
  ``[B, j_response]``, digit 0..9 or -100) trains ``ppo_loss + loss_coef * NTL`` (``loss.NTLActorLoss``); the batch
  needs verl's ``old_log_probs``, ``advantages`` and non-tensor ``global_batch_size``.
- ``reward_step.ntl_reward_step(responses=[B, R], response_mask=[B, R], digit_log_probs=[B, R, 10],
  solution_strs, ground_truths, data_sources, extra_infos, compute_score, digit_ids, tau, method, loss_targets)``
  -> ``RewardStepResult(rm_scores [B, R], ntl_targets [B, R], results, metrics)``: the trainer's reward step on
  plain padded tensors (``trainer.NTLPPOTrainer`` runs it between verl's old_log_prob and advantage stages).
"""
