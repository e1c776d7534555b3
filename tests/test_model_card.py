"""The model card every export writes: front matter the Hub parses, with the base as a hub id,
the library, the tag and the dataset; the evaluation's numbers as report.json has them."""

from __future__ import annotations

import json
import shutil

from test_export import run_dir  # noqa: F401  (the module-scoped run with a non-zero LoRA adapter)

REPORT = {
    "task": "demo", "n_examples": 40,
    "systems": {
        "teacher": {"agreement": 1.0, "mean_prompt_tokens": 412.5, "median_latency_ms": 88.25},
        "base": {"agreement": 0.35, "mean_prompt_tokens": 31.0, "median_latency_ms": 40.0},
        "student": {"agreement": 0.875, "mean_prompt_tokens": 30.5, "median_latency_ms": 41.0},
    },
    "fidelity": {"gap_closed": 0.734, "kl_base": 1.2, "kl_student": 0.32, "kind": "labels"},
    "general_ability": {"base_score": 0.6, "student_score": 0.55, "n": 20},
}


def _front_matter(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


def test_every_export_writes_a_card_with_the_evaluation(run_dir, tmp_path):  # noqa: F811
    from promptdistill.export import export_run

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps(REPORT), encoding="utf-8")
    written = export_run(run, merged=tmp_path / "m", adapter=tmp_path / "a", gguf=tmp_path / "g")
    libraries = {}
    for kind, folder in written.items():
        meta = _front_matter(folder)
        libraries[kind] = meta["library_name"]
        assert "prompt-distillation" in meta["tags"]
        assert "base_model" not in meta  # the student is a local folder: no hub id to name
        text = (folder / "README.md").read_text(encoding="utf-8")
        assert "is not a Hugging Face hub id" in text
        row = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines() if line.count("|") == 3}
        assert row["agreement with the teacher (teacher with the prompt, student without)"] == "87.5%"
        assert row["share of the prompt's effect kept (KL gap closed, base to teacher)"] == "73.4%"
        assert row["prompt tokens saved per request"] == "382.0"  # 412.5 - 30.5
        assert row["median latency saved per request"] == "47.2 ms"  # 88.25 - 41.0
        assert row["general ability, student minus base"] == "-5.0 points"
    assert libraries == {"merged": "transformers", "adapter": "peft", "gguf": "gguf"}


def test_card_names_hub_ids_and_says_when_not_evaluated(run_dir, tmp_path):  # noqa: F811
    from promptdistill.model_card import base_model_hub_id, dataset_hub_id, model_card
    from promptdistill.rundir import RunDir

    assert base_model_hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_hub_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert base_model_hub_id(str(tmp_path)) is None
    assert dataset_hub_id("hf://datasets/org/reviews:test") == "org/reviews"
    assert dataset_hub_id("inputs.jsonl") is None

    cfg = RunDir(run_dir).load_config()
    cfg.models.student = "smollm2-135m-instruct"
    cfg.data.inputs = "hf://datasets/org/reviews:train"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "README.md").write_text(model_card(cfg, "adapter", "# body\n", tmp_path / "missing.json"))
    meta = _front_matter(tmp_path / "c")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["org/reviews"] and meta["library_name"] == "peft"
    assert "had not been evaluated" in (tmp_path / "c" / "README.md").read_text()
