# Shared by the NTL example scripts (sourced, not run): verl's quick-start PPO for Qwen2.5-0.5B-Instruct on
# GSM8K, with the NTL trainer and engine plugged in. Sets COMMON_OVERRIDES; the caller adds its reward settings.
# The caller may set the variables below before sourcing it (the MATH and Llama-3 scripts do).
#
# Environment (all optional):
#   TAU            reward temperature tau of exp(-L/tau)            (default 1.0)
#   NTL_LOSS_COEF  weight of the NTL term in the actor loss           (default 0.0: verl's loss unchanged)
#   DATA_DIR       output of verl's examples/data_preprocess/gsm8k.py (default $HOME/data/gsm8k)
#   MODEL          model path or Hub id                               (default Qwen/Qwen2.5-0.5B-Instruct)
#   N_GPUS         GPUs on this node                                  (default 1)
#   ADV_ESTIMATOR  verl's algorithm.adv_estimator                     (default gae: PPO with a critic)
#   ROLLOUTS       responses per prompt, actor_rollout_ref.rollout.n  (default 1; GRPO needs several)
#   MAX_RESPONSE_LENGTH  data.max_response_length                     (default 512)
#   NTL_TRAINER_MODE  verl 0.9's v1 trainer mode: ntl (verl's sync schedule), ntl_colocate_async, ntl_separate_async
#                  (default ntl); verl 0.7 / 0.8 have no such key (main_ppo's RayPPOTrainer carries NTL there)
#   NTL_PRINT_OVERRIDES=1  print the hydra overrides, one a line, and exit (used by the tests)

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TAU=${TAU:-1.0}
NTL_LOSS_COEF=${NTL_LOSS_COEF:-0.0}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
N_GPUS=${N_GPUS:-1}
ADV_ESTIMATOR=${ADV_ESTIMATOR:-gae}
ROLLOUTS=${ROLLOUTS:-1}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-512}
NTL_TRAINER_MODE=${NTL_TRAINER_MODE:-ntl}
NTL_PLUGIN=verl_integration.plugin

# every process (driver, TaskRunner, workers) imports the plugin at `import verl`: the "ntl" trainer mode must
# exist in the TaskRunner; the actor workers also import it through model.external_lib
export VERL_USE_EXTERNAL_MODULES=$NTL_PLUGIN
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

# the trainer settings of the installed verl's release line (verl_integration/releases; an unsupported verl stops here)
VERL_LINE=$(python3 -c 'import importlib.metadata as m; from verl_integration.releases import line_name
print(line_name(m.version("verl")))') || exit 1
if [[ $VERL_LINE == v09 ]]; then
  TRAINER_OVERRIDES=(trainer.use_v1=true trainer.v1.trainer_mode="$NTL_TRAINER_MODE")
else
  TRAINER_OVERRIDES=()
fi

COMMON_OVERRIDES=(
  algorithm.adv_estimator="$ADV_ESTIMATOR"
  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$DATA_DIR/test.parquet"
  data.train_batch_size=256
  data.max_prompt_length=512
  data.max_response_length="$MAX_RESPONSE_LENGTH"
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.model.external_lib=$NTL_PLUGIN
  actor_rollout_ref.model.use_fused_kernels=false
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.ppo_mini_batch_size=64
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n="$ROLLOUTS"
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.4
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4
  critic.optim.lr=1e-5
  critic.model.path="$MODEL"
  critic.ppo_micro_batch_size_per_gpu=4
  algorithm.kl_ctrl.kl_coef=0.001
  "${TRAINER_OVERRIDES[@]}"
  trainer.logger=console
  trainer.val_before_train=false
  trainer.n_gpus_per_node="$N_GPUS"
  trainer.nnodes=1
  trainer.save_freq=10
  trainer.test_freq=10
  trainer.total_epochs=15
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=$NTL_PLUGIN
  +ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH="$PYTHONPATH"
  +ntl.loss_coef="$NTL_LOSS_COEF"
)

# Print the overrides (NTL_PRINT_OVERRIDES=1) or run verl's PPO entry point with them.
run_ntl_ppo() {
  if [[ "${NTL_PRINT_OVERRIDES:-0}" == 1 ]]; then
    printf '%s\n' "$@"
    return 0
  fi
  python3 -m verl.trainer.main_ppo "$@"
}
