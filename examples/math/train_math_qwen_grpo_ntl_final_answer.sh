#!/usr/bin/env bash
# GRPO on MATH-style data with the NTL Final-answer reward: score = exp(-L / tau), L = NTL of the final answer's
# number tokens against the ground truth. The reward routes by each row's data_source as verl's
# default_compute_score does: MATH (lighteval/MATH, DigitalLearningGmbH/MATH-lighteval, HuggingFaceH4/MATH-500)
# reads the last \boxed{...}, DAPO-Math / AIME (math_dapo, math, aime*) the answer after "Answer:", GSM8K "####".
# Answers that are no number (fractions, expressions) get verl's exact-match verdict and no NTL
# (metric reward/ntl_non_numeric).
#
#   TAU=0.5 bash examples/math/train_math_qwen_grpo_ntl_final_answer.sh [more hydra overrides]
#
# Data: verl's MATH preprocessing, `python3 examples/data_preprocess/math_dataset.py --local_save_dir ~/data/math`
# (from verl's repository), or a DAPO-Math parquet (DATA_DIR=~/data/dapo). Options: examples/gsm8k/ntl_common.sh.
set -euo pipefail
export DATA_DIR=${DATA_DIR:-$HOME/data/math} ADV_ESTIMATOR=${ADV_ESTIMATOR:-grpo} ROLLOUTS=${ROLLOUTS:-5} \
  MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-1024}
# the GSM8K Final-answer script's overrides with these settings: nothing in them is specific to GSM8K
exec bash "$(dirname "$0")/../gsm8k/train_gsm8k_qwen_ppo_ntl_final_answer.sh" "$@"
