#!/usr/bin/env bash
# PPO on GSM8K with the NTL All-tokens reward: score = EM * exp(-L / tau), L = NTL (nll) over every digit the
# response generated, computed from the actor's own digit distributions after old_log_prob.
#
#   TAU=2.0 bash examples/gsm8k/train_gsm8k_qwen_ppo_ntl.sh [more hydra overrides]
#
# Data: verl's GSM8K preprocessing, `python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k`
# (from verl's repository). Options and defaults: examples/gsm8k/ntl_common.sh, README.md ("NTL in verl").
set -euo pipefail
source "$(dirname "$0")/ntl_common.sh"

run_ntl_ppo "${COMMON_OVERRIDES[@]}" \
  reward.custom_reward_function.path="$REPO_DIR/ntl_reward/all_tokens.py" \
  reward.custom_reward_function.name=compute_score \
  +reward.custom_reward_function.reward_kwargs.tau="$TAU" \
  +ntl.mode=all_tokens \
  "$@"
