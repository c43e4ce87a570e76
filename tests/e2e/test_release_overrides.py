"""The e2e run's per-release overrides and the pre-0.9 padding bridge, without running main_ppo (fast)."""

import itertools
import os

import pytest
import torch

from tests.bridges import REARRANGEMENTS, rearrange
from tests.e2e.run import CASES, Inputs, installed_verl_version, main_ppo_command, release_overrides

RELEASES = ("0.7.1", "0.8.0", "0.9.0", "0.9.1")


@pytest.mark.parametrize("plain", [False, True])
def test_every_override_of_the_matrix_case_exists_in_the_installed_verl(tmp_path, plain):
    """Composes the matrix case's main_ppo overrides with the installed verl's own hydra config: a key this release
    lacks (``transfer_queue.backend`` on 0.7, ``trainer.use_v1`` before 0.9) fails here, not minutes into a run."""
    from hydra import compose, initialize_config_dir
    import verl

    inputs = Inputs(tmp_path / "model", tmp_path / "data", tmp_path / "script.json")
    command = main_ppo_command(CASES["matrix_final_grpo"], inputs, tmp_path, tmp_path / "ray", plain=plain)
    assert command[:3] == [command[0], "-m", "verl.trainer.main_ppo"]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=command[3:])
    assert config.actor_rollout_ref.rollout.name == "hf"
    assert ("ntl" in config) is not plain


@pytest.mark.parametrize("version", RELEASES)
def test_release_overrides_give_ray_a_cpu_resource_per_fake_gpu_only_before_0_9(version):
    overrides = release_overrides(version, n_gpus=2)
    assert ("+ray_kwargs.ray_init.resources.cpu=2" in overrides) is (version < "0.9")


def test_release_overrides_refuse_an_unknown_release():
    with pytest.raises(ValueError, match="0.6.1"):
        release_overrides("0.6.1")
    assert installed_verl_version() in RELEASES


@pytest.mark.parametrize("pattern", sorted(REARRANGEMENTS))
def test_rearrange_moves_every_element_where_einops_would(pattern):
    """Element by element: input axes named by the pattern, output ``(b s)`` flattened row-major."""
    names, target = (side.split() for side in pattern.split(" -> "))
    sizes = dict(zip("cbs", (2, 3, 4)))
    shape = [sizes[name] for name in names if name != "..."] + [5]
    tensor = torch.arange(torch.Size(shape).numel()).reshape(shape)
    out = rearrange(tensor, pattern)
    for index in itertools.product(*(range(size) for size in shape[:-1])):
        axis = dict(zip([name for name in names if name != "..."], index))
        row = axis["b"] * sizes["s"] + axis["s"]
        expected = tensor[index]
        got = out[row, axis["c"]] if "c" in axis else out[row]
        assert torch.equal(got, expected), (pattern, index)
    with pytest.raises(ValueError, match="patterns"):
        rearrange(tensor, "b s -> s b")
