"""Export: the merged folder answers like the student under plain transformers,
and the adapter folder loads with PEFT on the base it names."""

from __future__ import annotations

import json

import pytest

TEXTS = ["Bonjour tout le monde", "The cat sat on the mat.", "Hola, ¿qué tal?", "12345", "Привет, как дела?", "σήμερα"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A run directory with config.json and a LoRA adapter whose update is not zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("export-run")
    config = {
        "task": {"name": "demo", "system_prompt": "Answer with the language.", "max_new_tokens": 12},
        "models": {"teacher": tiny_model_dir, "student": tiny_model_dir, "device": "cpu", "dtype": "float32"},
    }
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: random A and B, so the adapter changes the answers
    # (a freshly initialised LoRA is a no-op and would prove nothing).
    lora = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(run / "train" / "adapter")
    return run


def _plain_greedy(folder, texts, max_new_tokens):
    """Greedy answers with nothing but transformers, the way a user of the folder would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        gen = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def test_merged_folder_answers_like_the_student(run_dir, tmp_path, tiny_model_dir, tokenizer):
    from promptdistill.cli import main
    from promptdistill.models import load_model
    from promptdistill.predict import load_student, predict_texts

    out = tmp_path / "merged"
    assert main(["export", "--run-dir", str(run_dir), "--merged", str(out)]) == 0
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()

    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert gen["pad_token_id"] == tokenizer.pad_token_id
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template

    task, student = load_student(run_dir, device="cpu")
    student_replies = [reply for _, reply in predict_texts(task, student, TEXTS)]
    base_replies = [reply for _, reply in predict_texts(task, load_model(tiny_model_dir, "cpu", "float32"), TEXTS)]
    assert student_replies != base_replies  # the adapter matters, so the comparison below is meaningful
    assert _plain_greedy(out, TEXTS, task.config.max_new_tokens) == student_replies


def test_adapter_folder_loads_with_peft_on_its_base(run_dir, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from promptdistill.export import export_adapter

    out = export_adapter(run_dir, tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == tiny_model_dir
    assert (out / "adapter_model.safetensors").read_bytes() == (run_dir / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"]), str(out))
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert "vllm serve" in (out / "README.md").read_text()


def test_a_4bit_trained_run_exports_merged_onto_the_full_precision_base(run_dir, tmp_path):
    """models.load_in_4bit is the student's while it trains: export (here, on a CPU without
    bitsandbytes) merges the adapter into the base in models.dtype, as for any run."""
    import shutil

    from safetensors.torch import load_file

    from promptdistill.cli import main

    quantized = tmp_path / "run-4bit"
    shutil.copytree(run_dir, quantized)
    config = json.loads((quantized / "config.json").read_text(encoding="utf-8"))
    config["models"].update(load_in_4bit=True, device="auto")  # as a run trained on a GPU records it
    (quantized / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main(["export", "--run-dir", str(quantized), "--merged", str(tmp_path / "m4")]) == 0
    assert main(["export", "--run-dir", str(run_dir), "--merged", str(tmp_path / "m")]) == 0
    a, b = load_file(str(tmp_path / "m4" / "model.safetensors")), load_file(str(tmp_path / "m" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in a)
    assert json.loads((tmp_path / "m4" / "config.json").read_text()).get("quantization_config") is None


def test_export_needs_a_trained_run(tmp_path, capsys):
    from promptdistill.cli import main

    assert main(["export", "--run-dir", str(tmp_path), "--merged", str(tmp_path / "m")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["export", "--run-dir", str(tmp_path)]) == 2
