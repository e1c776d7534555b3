"""Every training loss brings the student closer to the teacher on held-out inputs.

A learnable toy. The teacher is a small random model first fine-tuned (here,
in the fixture) to answer the prompt's question in the task's format, mostly
with one label; the student is the untouched random model without the
prompt, whose distribution over the labels is whatever random weights give. Each loss trains a LoRA adapter on the teacher's labels
for the training inputs, and the held-out KL(teacher || student)
(fidelity.py, the metric `eval` reports) must end below the untrained base's.
"""

from __future__ import annotations

import pytest

from promptdistill.config import ModelsConfig, TaskConfig, TrainConfig
from promptdistill.records import Example, LabeledExample
from promptdistill.task import OK, Task

WORDS = "alpha beta gamma delta sun moon river stone bread milk green blue quick slow city field".split()
LABELS = ["one", "two", "three"]


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
    return Task(TaskConfig(user_template="Name the topic of this text, one word: {text}", labels=LABELS,
                           answer_mode="choose", max_new_tokens=6))


def _train(records, run_dir, loss, teacher_dir, student_dir, task, steps):
    from promptdistill.training.recipe import train_student

    cfg = TrainConfig(loss=loss, lora_rank=8, lora_alpha=16, learning_rate=3e-3, max_steps=steps, batch_size=8,
                      save_every=1000, eval_every=1000, lr_schedule="constant")
    models = ModelsConfig(teacher=teacher_dir, student=student_dir, device="cpu", dtype="float32")
    train_student(records, run_dir, cfg, models, progress=False, task=task)
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

    from promptdistill.evaluation.systems import generate_answer
    from promptdistill.evaluation.fidelity import FidelityScorer
    from promptdistill.teachers.local import LocalTeacher
    from promptdistill.models import AdapterDisabled, LoadedModel, load_model

    scorer = FidelityScorer(task, LocalTeacher(teacher))
    base = load_model(student_dir, "cpu", "float32")
    student = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    views = {"base": LoadedModel(AdapterDisabled(student), base.tokenizer, student_dir, "cpu"),
             "student": LoadedModel(student, base.tokenizer, student_dir, "cpu")}
    replies = {e.id: generate_answer(task, teacher, task.teacher_messages(e.text))[0] for e in examples}
    kl = {name: sum(scorer.kl(v, e.id, e.text, replies[e.id])[0] for e in examples) / len(examples) for name, v in views.items()}
    return kl["base"], kl["student"]


@pytest.mark.parametrize("loss", ["sft", "kd", "kd-token", "on-policy"])
def test_each_loss_lowers_the_heldout_kl(loss, toy, tmp_path):
    from promptdistill.models import load_model
    from promptdistill.records import read_labeled
    from promptdistill.config import Config
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
