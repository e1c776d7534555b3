"""The losses (training/losses.py, training/onpolicy.py): hand-computed values,
independence from batching, gradients that reach only the LoRA parameters,
the frozen teacher of on-policy."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_task
from promptdistill.config import TrainConfig
from promptdistill.render import render_example, render_prompt, reply_ids
from promptdistill.training.data import collate
from promptdistill.training.losses import (
    LabelKDExample,
    TokenKDExample,
    label_kd_loss,
    label_kl,
    token_kd_loss,
    topk_kl,
    weighted_token_loss,
)
from promptdistill.training.recipe import lora_model

LABELS = ["en", "fr", "de"]


def _task(**kw):
    return make_task(user_template="Which language is this? {text}", answer_mode="choose", **kw)


# ---- sft: weighted token cross-entropy ------------------------------------------


def _sft_batch(tokenizer):
    convs = [
        [{"role": "user", "content": "short"}, {"role": "assistant", "content": "Final Answer: la"}],
        [{"role": "user", "content": "a much longer input with many more words in it"}, {"role": "assistant", "content": "Final Answer: cy"}],
    ]
    return collate([render_example(tokenizer, c) for c in convs], tokenizer.pad_token_id)


def _full_logits_loss(model, ids, mask, weights):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    w = weights[:, 1:]
    return (nll * w).sum(), w.sum()


def test_weighted_token_loss_equals_full_logits_computation(tiny, tokenizer):
    ids, mask, weights = _sft_batch(tokenizer)
    for model in (tiny.model, lora_model(tiny.model, TrainConfig(lora_rank=4))):
        got, n = weighted_token_loss(model, ids, mask, weights)
        want, n_ref = _full_logits_loss(model, ids, mask, weights)
        assert n == n_ref == 10  # "Final Answer: xx<|im_end|>" is 5 tokens, twice
        assert torch.allclose(got, want, atol=1e-4), (got, want)


def test_weighted_token_loss_ignores_unweighted_tokens(tiny, tokenizer):
    ids, mask, weights = _sft_batch(tokenizer)
    base, _ = weighted_token_loss(tiny.model, ids, mask, weights)
    changed = ids.clone()
    first_weighted = int(weights[0].nonzero()[0])
    changed[0, 3] = (changed[0, 3] + 1) % 1000  # a prompt token far before the reply: changes the context
    assert first_weighted > 4
    changed_loss, _ = weighted_token_loss(tiny.model, changed, mask, weights)
    assert not torch.allclose(base, changed_loss)  # the context matters
    zeroed = weights.clone()
    zeroed[0] = 0
    only_second, n = weighted_token_loss(tiny.model, ids, mask, zeroed)
    assert n == 5
    second_alone, _ = weighted_token_loss(tiny.model, ids[1:], mask[1:], weights[1:])
    assert torch.allclose(only_second, second_alone, atol=1e-4)


# ---- kd: label-level and token-level KL --------------------------------------------


def test_label_kl_equals_hand_computation():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([[0.25, 0.75, 1e-9]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert label_kl(p, q.log()).item() == pytest.approx(expected, rel=1e-6)


def test_topk_kl_keeps_the_rest_of_the_mass_as_one_outcome():
    student = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    top_ids = torch.tensor([[3, 2]])
    top_logp = torch.tensor([[0.5, 0.3]]).log()
    # teacher: 0.5 on token 3, 0.3 on token 2, 0.2 on "anything else" (student: 0.3)
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.3) + 0.2 * math.log(0.2 / 0.3)
    assert topk_kl(student, top_ids, top_logp).item() == pytest.approx(expected, rel=1e-5)


def test_topk_kl_is_the_full_kl_when_the_top_k_hold_all_the_mass():
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(3, 6), -1)
    student = torch.log_softmax(torch.randn(3, 6), -1)
    full = (teacher.exp() * (teacher - student)).sum(-1)
    values, ids = teacher.topk(6, dim=-1)
    assert torch.allclose(topk_kl(student, ids, values), full, atol=1e-5)
    # with fewer tokens listed, the coarsened KL is a lower bound
    values, ids = teacher.topk(2, dim=-1)
    assert (topk_kl(student, ids, values) <= full + 1e-6).all()


def _candidates(tokenizer, task, text):
    messages = task.student_messages(text)
    return render_prompt(tokenizer, messages), [reply_ids(tokenizer, messages, task.label_reply(label)) for label in LABELS]


def test_label_kd_loss_equals_kl_over_full_forwards(tiny, tokenizer):
    """The packed row scores every candidate as a separate full forward would."""
    task = _task()
    probs = [0.6, 0.3, 0.1]
    examples = []
    for text in ("hello there", "bonjour à tous les amis"):
        prompt, cands = _candidates(tokenizer, task, text)
        examples.append(LabelKDExample(prompt, cands, probs, 0))
    _, kl_sum = label_kd_loss(tiny.model, examples)
    expected = 0.0
    with torch.no_grad():
        for ex in examples:
            logq = []
            for c in ex.candidates:
                logp = torch.log_softmax(tiny.model(input_ids=torch.tensor([ex.prompt_ids + c])).logits[0].float(), -1)
                logq.append(sum(logp[len(ex.prompt_ids) - 1 + j, c[j]] for j in range(len(c))))
            p = torch.tensor(probs)
            expected += float((p * (p.log() - torch.stack(logq))).sum())
    assert kl_sum == pytest.approx(expected, rel=1e-4)


def test_token_kd_loss_does_not_depend_on_batching(tiny, tokenizer):
    task = _task()
    vocab = len(tokenizer)
    examples = []
    for text, n in (("short", 2), ("a much longer input text for padding", 4)):
        prompt = render_prompt(tokenizer, task.student_messages(text))
        reply = [100 + i for i in range(n)]
        top = [[[t, -0.5], [t + 1, -1.5], [(t + 7) % vocab, -3.0]] for t in reply]
        examples.append(TokenKDExample(prompt, reply, top))
    together, _ = token_kd_loss(tiny.model, examples, alpha=0.3)
    apart = sum(token_kd_loss(tiny.model, [ex], alpha=0.3)[0] for ex in examples)
    assert together.item() == pytest.approx(apart.item(), rel=1e-4)


def _assert_only_lora_gets_gradients(model):
    named = dict(model.named_parameters())
    with_grad = [n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any("lora_B" in n for n in with_grad)
    assert all(not p.requires_grad for n, p in named.items() if "lora_" not in n)


@pytest.mark.parametrize("kind", ["sft", "kd-label", "kd-token"])
def test_gradients_reach_only_lora(tiny, tokenizer, kind):
    task = _task()
    model = lora_model(tiny.model, TrainConfig(lora_rank=4))
    prompt, cands = _candidates(tokenizer, task, "guten Tag")
    if kind == "sft":
        ids, mask, weights = _sft_batch(tokenizer)
        loss, n = weighted_token_loss(model, ids, mask, weights)
        loss = loss / n
    elif kind == "kd-label":
        loss, _ = label_kd_loss(model, [LabelKDExample(prompt, cands, [0.2, 0.2, 0.6], 2)], alpha=0.5)
    else:
        top = [[[t, -0.1], [t + 3, -2.5]] for t in cands[2]]
        loss, _ = token_kd_loss(model, [TokenKDExample(prompt, cands[2], top)], alpha=0.5)
    loss.backward()
    _assert_only_lora_gets_gradients(model)


# ---- on-policy: the student samples, the teacher scores ------------------------------


@pytest.mark.parametrize("kl", ["full", "sampled"])
def test_on_policy_trains_the_student_and_leaves_the_shared_teacher_unchanged(varied_model, tokenizer, kl):
    from promptdistill.config import ModelsConfig
    from promptdistill.models import AdapterDisabled, load_model
    from promptdistill.records import Example
    from promptdistill.training.onpolicy import on_policy_loss, training_teacher

    task = _task(max_new_tokens=4)
    # a fresh copy: get_peft_model changes the model it wraps, and varied_model is shared
    fresh = load_model(varied_model.name, "cpu", "float32")
    model = lora_model(fresh.model, TrainConfig(lora_rank=4, lora_alpha=8))
    # the teacher is the student's own base weights (adapter switched off), as in training
    teacher = training_teacher(ModelsConfig(teacher=fresh.name, student=fresh.name, device="cpu"), model, tokenizer, "cpu")
    assert isinstance(teacher.loaded.model, AdapterDisabled)
    records = [Example(id=str(i), text=t) for i, t in enumerate(["hello world", "ciao a tutti", "hola amigos", "good morning"])]
    probe = [[400, 401, 402]] * len(records)

    def student_logprobs():
        with torch.no_grad():
            prompt = render_prompt(tokenizer, task.student_messages(records[0].text))
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + probe[0]])).logits[0].float(), -1)
            return logp[len(prompt) - 1 : -1].gather(1, torch.tensor(probe[0]).unsqueeze(1)).squeeze(1)

    teacher_before = teacher.continuation_logprobs(task, [r.text for r in records], probe)
    student_before = student_logprobs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 4):
        loss, reverse_kl, sampled = on_policy_loss(model, tokenizer, task, teacher, records, step=step, seed=0, temperature=1.0, kl=kl)
        assert sampled >= len(records) and math.isfinite(reverse_kl)
        (loss / len(records)).backward()
        if step == 1:
            _assert_only_lora_gets_gradients(model)
        optimizer.step()
        optimizer.zero_grad()
    teacher_after = teacher.continuation_logprobs(task, [r.text for r in records], probe)
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher_after))
    assert not torch.allclose(student_before, student_logprobs())


def test_on_policy_samples_do_not_depend_on_the_batch(varied_model, tokenizer):
    from promptdistill.training.onpolicy import sample_replies, sample_seed

    task = _task(max_new_tokens=5)
    prompts = [render_prompt(tokenizer, task.student_messages(t)) for t in ("one", "two words", "three more words")]
    seeds = [sample_seed(0, 1, str(i)) for i in range(3)]
    together = sample_replies(varied_model.model, tokenizer, prompts, seeds, max_new_tokens=5, temperature=1.0)
    alone = [sample_replies(varied_model.model, tokenizer, [p], [s], max_new_tokens=5, temperature=1.0)[0]
             for p, s in zip(prompts, seeds)]
    assert together == alone
