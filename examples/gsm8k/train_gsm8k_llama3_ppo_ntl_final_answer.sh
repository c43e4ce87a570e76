#!/usr/bin/env bash
# PPO on GSM8K with the NTL Final-answer reward for a Llama-3 model. Llama-3's tokenizer cuts numbers into tokens
# of up to 3 digits ('1234' -> '123' '4'); the NTL trainer reads its 1,110 number tokens ('0'..'999', leading zeros
# included) from the model's tokenizer and aligns each emitted number token with the ground truth's digits at its
# places. Nothing else changes: this is the Qwen script with another MODEL.
#
#   TAU=0.5 bash examples/gsm8k/train_gsm8k_llama3_ppo_ntl_final_answer.sh [more hydra overrides]
set -euo pipefail
MODEL=${MODEL:-meta-llama/Llama-3.2-1B-Instruct} exec bash "$(dirname "$0")/train_gsm8k_qwen_ppo_ntl_final_answer.sh" "$@"
