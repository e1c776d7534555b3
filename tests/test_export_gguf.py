"""GGUF export: the file loads back with transformers (its GGUF reader) and answers like
the student; the Ollama Modelfile carries the student's chat template and no system prompt;
what cannot be written faithfully is refused before anything is written."""

from __future__ import annotations

import json

import pytest
from test_export import TEXTS, run_dir  # noqa: F401  (the module-scoped run with a non-zero LoRA adapter)


def gguf_greedy(folder, name, texts, max_new_tokens):
    """Greedy answers of the GGUF file as transformers loads it (de-quantized), with the tokenizer it carries."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    out = []
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        gen = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def student_greedy(run, texts):
    from promptdistill.predict import load_student
    from promptdistill.render import end_of_turn_ids

    task, student = load_student(run, device="cpu")
    tok, model = student.tokenizer, student.model.merge_and_unload().eval()
    out = []
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        gen = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=task.config.max_new_tokens,
                             do_sample=False, eos_token_id=sorted(end_of_turn_ids(tok)), pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return task, out


def agreement(a, b) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def test_gguf_answers_like_the_student_and_ships_a_modelfile(run_dir, tmp_path, tokenizer):  # noqa: F811
    from promptdistill.cli import main

    task, expected = student_greedy(run_dir, TEXTS)
    sizes, agree = {}, {}
    for kind in ("f32", "f16", "q8_0"):
        out = tmp_path / kind
        assert main(["export", "--run-dir", str(run_dir), "--gguf", str(out), "--gguf-type", kind]) == 0
        name = f"demo-{kind}.gguf"
        assert sorted(p.name for p in out.iterdir()) == sorted([name, "Modelfile", "README.md", ".promptdistill-export.json"])
        sizes[kind] = (out / name).stat().st_size
        agree[kind] = agreement(gguf_greedy(out, name, TEXTS, task.config.max_new_tokens), expected)
    print(f"greedy agreement with the merged student on {len(TEXTS)} inputs: {agree}")
    assert agree["f32"] == 1.0  # float32 is the merged model itself: the same tokens
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]

    modelfile = (tmp_path / "f16" / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./demo-f16.gguf\n" in modelfile
    assert "You are a helpful AI assistant named SmolLM" in modelfile  # the template's own default system text
    assert "Answer with the language." not in modelfile and "\nSYSTEM" not in modelfile  # no task prompt
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_ollama_template_renders_the_chat_template(tokenizer):
    from promptdistill.ollama import chat_pieces, go_template, render_like_ollama

    pieces = chat_pieces(tokenizer)
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]
    assert render_like_ollama(pieces, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                                 add_generation_prompt=True)
    template = go_template(pieces)
    # Each piece appears in the Go template as a Go string literal, and nothing else is literal text.
    for piece in pieces.values():
        assert "{{ " + json.dumps(piece, ensure_ascii=False) + " }}" in template
    assert '"""' not in template


def test_a_template_ollama_cannot_reproduce_is_refused_before_writing(run_dir, tmp_path, tiny_model_dir, capsys):  # noqa: F811
    """A template that renders the last message differently has no per-message Go equivalent."""
    import shutil

    from promptdistill.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["models"]["student"] = str(model)
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path / "gguf"
    assert main(["export", "--run-dir", str(run), "--gguf", str(out)]) == 2
    assert "cannot be written as an Ollama template" in capsys.readouterr().err
    assert not out.exists()


def test_an_unsupported_family_is_refused_before_writing(run_dir, tmp_path, tokenizer, capsys):  # noqa: F811
    import shutil

    from conftest import build_varied_model

    from promptdistill.cli import main

    build_varied_model(tmp_path / "mistral", tokenizer, seed=0, family="mistral")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["models"]["student"] = str(tmp_path / "mistral")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["export", "--run-dir", str(run), "--gguf", str(tmp_path / "g"), "--merged", str(tmp_path / "m")]) == 2
    assert "supports the llama and qwen2 model families" in capsys.readouterr().err
    assert not (tmp_path / "g").exists() and not (tmp_path / "m").exists()


def test_qwen2_round_trips_through_gguf(tmp_path, tokenizer):
    """A tiny random Qwen2 (with its q/k/v biases, no head reordering) comes back with the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from promptdistill.gguf_export import write_gguf

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:  # non-zero biases, so a lost bias shows
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    tokenizer.save_pretrained(tmp_path / "tok")
    write_gguf(model, tokenizer, tmp_path / "tok", tmp_path / "q.gguf", "f32", "qwen2-test")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf").eval()
    assert back.config.model_type == "qwen2"
    ids = torch.tensor([tokenizer("Bonjour tout le monde, 123")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_packaged_smollm2_round_trips_through_gguf(tmp_path):
    """The packaged SmolLM2 with a random non-zero LoRA: GGUF f16 and q8_0 answers against the merged model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from promptdistill.export import export_gguf
    from promptdistill.models import load_model

    run = tmp_path / "run"
    config = {"task": {"name": "smol", "system_prompt": "Answer with the language.", "max_new_tokens": 24},
              "models": {"teacher": "smollm2-135m-instruct", "student": "smollm2-135m-instruct", "device": "cpu",
                         "dtype": "float32"}}
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.manual_seed(1)
    base = load_model("smollm2-135m-instruct", "cpu", "float32").model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    for name, p in peft_model.named_parameters():  # a small update: the student stays a working chat model
        if "lora_B" in name:
            p.data.mul_(0.01)
    peft_model.save_pretrained(run / "train" / "adapter")
    texts = TEXTS + ["What is the capital of France?", "Write one word for happy.", "2 + 2 ="]
    _, expected = student_greedy(run, texts)
    agree = {}
    for kind in ("f16", "q8_0"):
        out = export_gguf(run, tmp_path / kind, gguf_type=kind)
        agree[kind] = agreement(gguf_greedy(out, f"smol-{kind}.gguf", texts, 24), expected)
    print(f"SmolLM2 GGUF greedy agreement with the merged model on {len(texts)} inputs: {agree}")
    assert agree["f16"] >= 0.75 and agree["q8_0"] >= 0.5
