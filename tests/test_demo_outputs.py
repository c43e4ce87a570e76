"""A demo run's folder is complete or absent: outputs go to ``NAME.incomplete/`` and replace ``NAME/`` only when the
run (or ``--compare``) completes; a stopped run leaves the previous run untouched and its partial outputs marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntl_demo import cli, train
from ntl_demo.outputs import MARKER, OutputFolder
from ntl_demo.train import RunConfig

PREVIOUS_RUN = {"summary.json": '{"previous": true}\n', "table.md": "| previous |\n", "curves.png": "previous png",
                "metrics.jsonl": '{"step": 1}\n{"step": 2}\n'}


def _previous_run(folder: Path) -> dict[str, bytes]:
    """A finished run's files in ``folder``; returns them to compare with later."""
    folder.mkdir(parents=True)
    for name, text in PREVIOUS_RUN.items():
        (folder / name).write_text(text)
    return _files(folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


class _EngineFromDisk:
    """Stands in for verl's engine (its set-up alone takes ~20 s here; real runs: tests/test_demo.py): it loads the
    policy it is given from disk, as the engine does, and hands those weights back to the rollout model."""

    def __init__(self, policy_dir, **settings):
        from safetensors.torch import load_file

        self.weights = load_file(Path(policy_dir) / "model.safetensors")

    def rollout_weights(self):
        return iter(self.weights.items())


def test_run_interrupted_at_a_step_leaves_the_previous_run_and_a_marked_partial_folder(tmp_path, monkeypatch):
    """``train.run`` with a tiny config (real data, tokenizer, policy, held-out evaluation), Ctrl-C (KeyboardInterrupt)
    at RL step 2 of 3, over a finished run of the same name."""
    previous = _previous_run(tmp_path / "run")
    steps_started = []

    def rl_step_interrupted_at_step_2(*args, **kwargs):
        steps_started.append(len(steps_started) + 1)
        if len(steps_started) == 2:
            raise KeyboardInterrupt
        return {"exact_match": 0.5, "reward_mean": 0.5}

    monkeypatch.setattr(train.pipeline, "PolicyEngine", _EngineFromDisk)
    monkeypatch.setattr(train, "rl_step", rl_step_interrupted_at_step_2)
    config = RunConfig(steps=3, out=tmp_path, name="run", warmup_steps=0, max_new_tokens=4, hidden_size=8, layers=1,
                       eval_problems=2, train_problems=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, echo=lambda line: None)
    assert steps_started == [1, 2]
    assert _files(tmp_path / "run") == previous  # untouched
    partial = tmp_path / "run.incomplete"
    assert [json.loads(line)["step"] for line in (partial / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not any((partial / name).exists() for name in ("summary.json", "table.md", "curves.png"))
    marker = (partial / MARKER).read_text()
    assert "stopped by KeyboardInterrupt during RL step 2 of 3" in marker and "`../run/`" in marker


def test_cli_reports_an_interrupted_run_and_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_single", interrupted)
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: None)  # process-wide; not in the test process
    try:
        status = cli.main(["--out", str(tmp_path), "--name", "run"])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt left main as a traceback")
    assert status == 130
    error = capsys.readouterr().err
    assert f"untouched in {tmp_path / 'run'}," in error
    assert f"partial outputs are in {tmp_path / 'run.incomplete'}" in error


def _fake_write_run(calls: list, interrupt_at_call: int | None):
    """Stands in for the training in ``train.run``: writes what a run writes, records what it was given, and raises
    KeyboardInterrupt in its ``interrupt_at_call``-th call (1-based), mid RL step 1."""
    def write_run(config, folder, model_path, echo):
        calls.append((config, model_path))
        assert model_path is None or model_path.is_dir()  # the shared warm-up, where it is while --compare runs
        (folder.work / "metrics.jsonl").write_text("")
        (folder.work / "policy_init").mkdir()
        if len(calls) == interrupt_at_call:
            folder.stage = "RL step 1 of 1"
            raise KeyboardInterrupt
        rows = [{"step": 1, "exact_match": 0.5, "digit_acc": 0.5, "reward_mean": 0.5}]
        held_out = [{"step": 0, "exact_match": 0.25, "digit_acc": 0.5},
                    {"step": 1, "exact_match": 0.5, "digit_acc": 0.5}]
        (folder.work / "summary.json").write_text(json.dumps({"config": str(config.model)}))
        return rows, {"held_out": held_out}

    return write_run


def test_compare_interrupted_then_completed(tmp_path, monkeypatch):
    config = RunConfig(steps=1, out=tmp_path, progress=False)
    compare_dir = tmp_path / "compare"
    previous = _previous_run(compare_dir)
    first, third = (cli.compare_run_name(label, 0) for label, _ in (cli.COMPARE_VARIANTS[0], cli.COMPARE_VARIANTS[2]))

    calls = []
    monkeypatch.setattr(train, "_write_run", _fake_write_run(calls, interrupt_at_call=3))
    with pytest.raises(KeyboardInterrupt):
        cli.run_compare(config, seeds=1)
    assert _files(compare_dir) == previous
    partial = tmp_path / "compare.incomplete"
    # the variants that finished are complete folders; the stopped one is marked; no report
    assert (partial / first / "summary.json").is_file() and not (partial / first / MARKER).exists()
    assert "during RL step 1 of 1" in (partial / f"{third}.incomplete" / MARKER).read_text()
    assert f"during the run {third}" in (partial / MARKER).read_text()
    assert not (partial / "compare.md").exists()

    calls.clear()
    monkeypatch.setattr(train, "_write_run", _fake_write_run(calls, interrupt_at_call=None))
    cli.run_compare(config, seeds=1)
    assert not (tmp_path / "compare.incomplete").exists() and not (tmp_path / ".compare.replaced").exists()
    assert sorted(path.name for path in compare_dir.iterdir()) == sorted(
        ["compare.md", "compare.png"] + [cli.compare_run_name(label, 0) for label, _ in cli.COMPARE_VARIANTS])
    # configs name the shared warm-up where it is once complete; the runs read it where it was while running
    for config_given, model_path in calls[1:]:
        assert config_given.model == compare_dir / first / "policy_init"
        assert model_path == tmp_path / "compare.incomplete" / first / "policy_init"
    assert (compare_dir / first / "policy_init").is_dir()


def test_output_folder_replaces_leftovers_and_refuses_foreign_folders(tmp_path):
    final = tmp_path / "run"
    _previous_run(final)
    leftover = tmp_path / "run.incomplete"
    leftover.mkdir()
    (leftover / MARKER).write_text("an earlier interrupted run")
    (leftover / "stale.txt").write_text("stale")
    with OutputFolder(final) as folder:
        assert folder.work == leftover and not (leftover / "stale.txt").exists()
        (folder.work / "summary.json").write_text("new")
    assert _files(final) == {"summary.json": b"new"}  # no file of the previous run is left beside the new one
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]

    foreign = tmp_path / "foreign"
    (foreign / "a-run").mkdir(parents=True)  # a folder of runs is not a run: `--out . --name runs`
    (foreign / "a-run" / "metrics.jsonl").write_text("")
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="is not a demo run's output"):
        with OutputFolder(foreign):
            pass
    assert _files(foreign) == {"a-run/metrics.jsonl": b"", "thesis.tex": b"mine"}
    assert not (tmp_path / "foreign.incomplete").exists()


def test_a_failing_run_is_marked_with_its_error(tmp_path):
    with pytest.raises(ValueError, match="bad data"):
        with OutputFolder(tmp_path / "run") as folder:
            folder.stage = "the set-up"
            raise ValueError("bad data")
    assert not (tmp_path / "run").exists()
    assert "stopped by ValueError (bad data) during the set-up" in (tmp_path / "run.incomplete" / MARKER).read_text()
