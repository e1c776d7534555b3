"""The student learns (slow: real learning runs on CPU).

1. sft: a tiny random-init student learns, by LoRA training alone, a mapping
   it could not know. The mapping is the script of the input: lowercase
   "words" in Latin letters -> "la", Cyrillic -> "cy", Greek -> "gr". A
   random-init model answers garbage before training; after a short LoRA run
   it must answer the held-out inputs (never trained on) in the exact
   "Final Answer: <label>" format. The base model's weights must be
   untouched: only LoRA parameters are trained and saved.

2. kd (label- and token-level) and on-policy: each brings the student closer
   to the teacher on held-out inputs. A learnable toy: the teacher is a small
   random model first fine-tuned (here, in the fixture, with sft) to answer
   the prompt's question in the task's format, mostly with one label; the
   student is the untouched random model without the prompt, whose
   distribution over the labels is whatever random weights give. Each loss
   trains a LoRA adapter on the teacher's labels for the training inputs, and
   the held-out KL(teacher || student) (fidelity.py, the metric `eval`
   reports) must end below the untrained base's. (sft learning is shown by 1.)
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from promptdistill.config import Config, ModelsConfig, TaskConfig, TrainConfig
from promptdistill.records import Example, LabeledExample
from promptdistill.task import OK, Task

pytestmark = pytest.mark.slow

# ---- 1. sft learns a mapping the student could not know ----------------------------

ALPHABETS = {
    "la": "abcdefghijklmnopqrstuvwxyz",
    "cy": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "gr": "αβγδεζηθικλμνξοπρστυφχψω",
}
LABELS = list(ALPHABETS)


def _random_text(rng: random.Random, label: str) -> str:
    letters = ALPHABETS[label]
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(1, 3))]
    return " ".join(words)


def make_texts(n_train: int, n_heldout: int, seed: int = 1234):
    """(train, heldout) lists of (text, label), balanced over the labels, no text in both."""
    rng = random.Random(seed)
    seen: set[str] = set()
    items = []
    i = 0
    while len(items) < n_train + n_heldout:
        label = LABELS[i % len(LABELS)]
        text = _random_text(rng, label)
        if text in seen:
            continue
        seen.add(text)
        items.append((text, label))
        i += 1
    return items[:n_train], items[n_train:]


def labeled(items, prefix: str):
    out = []
    for n, (text, label) in enumerate(items):
        reply = f"Final Answer: {label}"
        out.append(
            LabeledExample(
                id=f"{prefix}{n}", text=text, gold_label=label, teacher_reply=reply, label=label, status=OK,
                messages=[{"role": "user", "content": text}, {"role": "assistant", "content": reply}],
            )
        )
    return out


def agreement(task, loaded, items) -> tuple[float, list[tuple[str | None, str]]]:
    """Fraction of `items` whose predicted label is the mapping's, and the predictions."""
    from promptdistill.predict import predict_texts

    preds = predict_texts(task, loaded, [t for t, _ in items])
    return sum(label == gold for (label, _), (_, gold) in zip(preds, items)) / len(items), preds


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_untied_model(folder, tokenizer, seed: int = 3, layers: int = 2, hidden: int = 128) -> str:
    """Like conftest.build_tiny_model, but with an output layer separate from the input embeddings.

    With tied embeddings a random-init model's hidden state at a token points
    at that token's own output row, so it keeps echoing its input ("la la la",
    "Final Answer:Final Answer:"); the output layer is frozen under LoRA, and
    unlearning that echo takes far more steps than this test can afford.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def script_model_dir(tmp_path_factory, tokenizer):
    return build_untied_model(tmp_path_factory.mktemp("script-model"), tokenizer)


def test_tiny_student_learns_script_mapping(tmp_path, script_model_dir):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from promptdistill.models import load_model
    from promptdistill.training.recipe import train_student

    train_items, heldout_items = make_texts(150, 30)
    assert not {t for t, _ in train_items} & {t for t, _ in heldout_items}
    assert {label for _, label in heldout_items} == set(LABELS)

    task = Task(TaskConfig(user_template="Which script? {text}", labels=LABELS, max_new_tokens=12))
    (base_weights,) = sorted(Path(script_model_dir).glob("*.safetensors"))
    digest_before = _sha256(base_weights)
    tensors_before = load_file(str(base_weights))

    # Before training: the random-init model does not know the mapping.
    base = load_model(script_model_dir, "cpu", "float32")
    base_agreement, _ = agreement(task, base, heldout_items)
    assert base_agreement < 0.5
    del base

    run_dir = tmp_path / "train"
    train_cfg = TrainConfig(
        lora_rank=16, lora_alpha=32, learning_rate=5e-3, lr_schedule="cosine", warmup_steps=0,
        max_steps=100, batch_size=16, eval_every=25, save_every=1000, seed=0,
    )
    models_cfg = ModelsConfig(student=script_model_dir, teacher=script_model_dir, device="cpu", dtype="float32")
    cfg = Config(task=task.config, train=train_cfg, models=models_cfg)
    summary = train_student(cfg, labeled(train_items, "t"), run_dir, heldout=labeled(heldout_items, "h"), progress=False)
    assert summary["steps"] == 100
    assert summary["train_examples"] == 150

    # Held-out loss went down from the first evaluation to the last.
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    heldout = [m["heldout_loss"] for m in lines if "heldout_loss" in m]
    assert [m["step"] for m in lines if "heldout_loss" in m] == [25, 50, 75, 100]
    assert heldout[-1] < heldout[0]
    assert summary["final_heldout_loss"] == pytest.approx(heldout[-1])
    step_losses = [m["loss"] for m in lines if "loss" in m]
    assert len(step_losses) == 100 and step_losses[-1] < step_losses[0]

    # After training: the student answers held-out inputs by script.
    student = load_model(script_model_dir, "cpu", "float32", adapter=run_dir / "adapter")
    student_agreement, preds = agreement(task, student, heldout_items)
    assert student_agreement >= 0.9, f"student agreement {student_agreement:.2f} (base {base_agreement:.2f}): {preds}"
    # ... in exactly the trained format, stopping at the end of its turn
    exact = sum(reply == f"Final Answer: {gold}" for (_, reply), (_, gold) in zip(preds, heldout_items))
    assert exact >= 0.9 * len(heldout_items), preds

    # Only LoRA parameters were trained: the base folder is untouched, the
    # adapter holds only lora_ tensors, and the base weights inside the
    # loaded student equal the originals.
    assert _sha256(base_weights) == digest_before
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    with safe_open(str(adapter_file), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), [k for k in keys if "lora_" not in k]
    adapter_tensors = load_file(str(adapter_file))
    # LoRA B starts at zero: a nonzero B means the adapter was actually trained
    assert any(t.abs().max() > 0 for k, t in adapter_tensors.items() if "lora_B" in k)
    adapter_cfg = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_alpha"] == 32
    base_state = student.model.get_base_model().state_dict()
    compared = 0
    for name, tensor in base_state.items():
        if "lora_" in name:
            continue
        original = name.replace(".base_layer.", ".")
        if original in tensors_before:
            assert torch.equal(tensor, tensors_before[original]), name
            compared += 1
    assert compared == len(tensors_before)  # every saved base tensor was compared


# ---- 2. kd and on-policy bring the student closer to the teacher -------------------

WORDS = "alpha beta gamma delta sun moon river stone bread milk green blue quick slow city field".split()
TOY_LABELS = ["one", "two", "three"]


def _inputs(n: int, offset: int) -> list[Example]:
    return [Example(id=f"x{offset + i}", text=" ".join(WORDS[(offset + i * k) % len(WORDS)] for k in (1, 3, 5)))
            for i in range(n)]


def _rule(text: str) -> str:
    # mostly "two": a teacher distribution the student can learn from a few dozen inputs
    return "three" if WORDS.index(text.split()[0]) % 6 == 0 else "two"


def _task(free_form: bool) -> Task:
    if free_form:
        return Task(TaskConfig(user_template="Name the topic of this text, one word: {text}", answer_pattern=r"(?s)(.+)",
                               answer_template="{label}", student_target="teacher_reply", max_new_tokens=6, top_logprobs=20))
    return Task(TaskConfig(user_template="Name the topic of this text, one word: {text}", labels=TOY_LABELS,
                           answer_mode="choose", max_new_tokens=6))


def _train(records, run_dir, loss, teacher_dir, student_dir, task, steps):
    from promptdistill.training.recipe import train_student

    cfg = Config(task=task.config,
                 train=TrainConfig(loss=loss, lora_rank=8, lora_alpha=16, learning_rate=3e-3, max_steps=steps, batch_size=8,
                                   save_every=1000, eval_every=1000, lr_schedule="constant"),
                 models=ModelsConfig(teacher=teacher_dir, student=student_dir, device="cpu", dtype="float32"))
    train_student(cfg, records, run_dir, progress=False)
    return run_dir / "adapter"


@pytest.fixture(scope="module")
def toy(varied_model, tmp_path_factory):
    """(teacher folder, student folder)."""
    from peft import PeftModel

    from promptdistill.models import load_model

    root = tmp_path_factory.mktemp("toy")
    task = _task(free_form=False)
    records = []
    for e in _inputs(48, 200):
        reply = task.label_reply(_rule(e.text))
        messages = task.teacher_messages(e.text) + [{"role": "assistant", "content": reply}]
        records.append(LabeledExample(e.id, e.text, None, reply, _rule(e.text), OK, messages))
    adapter = _train(records, root / "teacher-training", "sft", varied_model.name, varied_model.name, task, steps=30)
    base = load_model(varied_model.name, "cpu", "float32")
    merged = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
    merged.save_pretrained(root / "teacher")
    base.tokenizer.save_pretrained(root / "teacher")
    return str(root / "teacher"), varied_model.name


def _heldout_kl(task, teacher, student_dir, adapter, examples) -> tuple[float, float]:
    from peft import PeftModel

    from conftest import one_request_answer
    from promptdistill.evaluation.fidelity import FidelityScorer
    from promptdistill.models import AdapterDisabled, LoadedModel, load_model
    from promptdistill.teachers.local import LocalTeacher

    scorer = FidelityScorer(task, LocalTeacher(teacher))
    base = load_model(student_dir, "cpu", "float32")
    student = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    views = {"base": LoadedModel(AdapterDisabled(student), base.tokenizer, student_dir, "cpu"),
             "student": LoadedModel(student, base.tokenizer, student_dir, "cpu")}
    replies = {e.id: one_request_answer(task, teacher, task.teacher_messages(e.text))[0] for e in examples}
    kl = {name: sum(scorer.kl(v, e.id, e.text, replies[e.id])[0] for e in examples) / len(examples) for name, v in views.items()}
    return kl["base"], kl["student"]


@pytest.mark.parametrize("loss", ["kd", "kd-token", "on-policy"])
def test_each_loss_lowers_the_heldout_kl(loss, toy, tmp_path):
    from promptdistill.models import load_model
    from promptdistill.records import read_labeled
    from promptdistill.labeling import label_inputs
    from promptdistill.teachers.local import LocalTeacher

    teacher_dir, student_dir = toy
    task = _task(free_form=loss == "kd-token")
    teacher = load_model(teacher_dir, "cpu", "float32")
    label_inputs(Config(task=task.config), _inputs(24, 0), LocalTeacher(teacher), tmp_path / "labels.jsonl", progress=False, batch_size=8)
    records = read_labeled(tmp_path / "labels.jsonl")
    assert len(records) == 24
    if loss == "kd-token":
        assert all(r.teacher_logprobs and len(r.teacher_logprobs["top"][0]) == 20 for r in records)
    adapter = _train(records, tmp_path / "train", "kd" if loss == "kd-token" else loss, teacher_dir, student_dir, task, steps=20)
    base_kl, student_kl = _heldout_kl(task, teacher, student_dir, adapter, _inputs(8, 100))
    assert student_kl < 0.8 * base_kl, (base_kl, student_kl)
