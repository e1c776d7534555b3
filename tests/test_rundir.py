"""RunDir: the one place that knows a run directory's layout and reads it back."""

from __future__ import annotations

import pytest

from conftest import write_task_file
from promptdistill.config import load_config, save_config
from promptdistill.errors import PromptDistillError
from promptdistill.rundir import STAGES, RunDir


def test_config_round_trips(tmp_path):
    cfg = load_config(write_task_file(tmp_path, "/some/model", train=dict(max_steps=3)))
    run = RunDir(tmp_path / "run")
    save_config(cfg, run.config_path)
    back = run.load_config()
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("content, what", [(None, "not a run directory"), ("{not json", "corrupt run configuration"),
                                           ("[1, 2]", "corrupt run configuration")])
def test_missing_or_corrupt_config_is_one_clear_error(tmp_path, content, what):
    run = RunDir(tmp_path)
    if content is not None:
        run.config_path.write_text(content)
    with pytest.raises(PromptDistillError) as info:
        run.load_config()
    assert what in str(info.value) and "\n" not in str(info.value)


def test_missing_adapter_names_the_folder(tmp_path):
    with pytest.raises(PromptDistillError) as info:
        RunDir(tmp_path).adapter()
    assert "train" in str(info.value) and "adapter" in str(info.value)


def test_plan_runs_missing_stages_and_refuses_stale_ones_without_force(tmp_path):
    run = RunDir(tmp_path)
    prints = {s: {"data": {"seed": s}} for s in STAGES}
    assert run.plan(prints, force=False) == list(STAGES)
    run.mark_done("split", prints["split"], {})
    run.mark_done("label", prints["label"], {})
    assert run.plan(prints, force=False) == ["train", "eval"]
    (run.path / "labels").mkdir()
    (run.path / "labels" / "train.jsonl").write_text("{}\n")
    changed = {**prints, "label": {"data": {"seed": "other"}}}
    with pytest.raises(PromptDistillError, match=r"stage 'label' already ran here with different settings \(data.seed\); --force"):
        run.plan(changed, force=False)
    assert (run.path / "labels" / "train.jsonl").exists()  # refused: nothing removed
    assert run.plan(changed, force=True) == ["label", "train", "eval"]
    assert not (run.path / "labels").exists()


def test_corrupt_stage_marker_is_one_clear_error(tmp_path):
    run = RunDir(tmp_path)
    run.marker("split").parent.mkdir(parents=True)
    run.marker("split").write_text("{torn")
    with pytest.raises(PromptDistillError, match="corrupt stage marker"):
        run.plan({s: {} for s in STAGES}, force=False)
