"""Training the student: LoRA fine-tuning without the prompt.

The loop is plain PyTorch and only the LoRA parameters are trained. What the
student matches is `train.loss` (losses.py, onpolicy.py):

- sft: each example is rendered to token ids plus loss weights (render.py);
  the loss is the weighted mean of per-token cross-entropy over all weighted
  tokens of an optimiser step;
- kd: KL from the teacher's stored soft labels, mean over the step's examples;
- on-policy: the student samples, the teacher scores; mean over the step's examples.

Per-unit losses are summed over micro-batches and divided by the step's
total, so gradient accumulation gives the same result as one big batch. The
same sum makes the order of a step's items irrelevant, so each step's group is
sorted by length before it is cut into micro-batches (less padding, same
loss up to float rounding). Under torchrun / accelerate launch each process
trains on its shard of every step and the gradients are summed across
processes (distributed.py); only the main process writes the run directory.

The run directory receives:

    metrics.jsonl             one line per step (loss, lr, tokens/s) and per held-out evaluation
    checkpoints/step-N/       every `save_every` steps and at the end: adapter, optimizer,
                              scheduler and RNG state (see checkpoint.py); a rerun resumes
                              from the newest one and ends with the same adapter
    adapter/                  the final PEFT adapter
    train_summary.json        steps, losses, time, examples skipped for length
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_metrics
from ..config import ModelsConfig, TrainConfig, training_settings
from .distributed import Distributed
from ..errors import PromptDistillError
from ..io import DirectoryLock, atomic_directory, atomic_write_json
from ..models import load_model, resolve_device
from ..records import LabeledExample
from .losses import kd_kind, label_kd_examples, label_kd_loss, token_kd_examples, token_kd_loss, weighted_token_loss
from ..render import RenderedExample, render_example, render_prompt
from ..task import OK, Task
from .tracking import open_tracker


def render_for_training(records: list[LabeledExample], tokenizer, max_length: int):
    """Render the usable records; return (rendered, ids of records over max_length)."""
    rendered, too_long = [], []
    for r in records:
        if r.status != OK:
            continue
        ex = render_example(tokenizer, r.messages)
        if ex.num_tokens > max_length:
            too_long.append(r.id)
            continue
        rendered.append(ex)
    return rendered, too_long


def collate(batch: list[RenderedExample], pad_id: int):
    width = max(e.num_tokens for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = e.num_tokens
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        weights[i, :n] = torch.tensor(e.weights)
    return ids, mask, weights


def heldout_loss(model, examples: list[RenderedExample], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per target token over `examples`."""
    total, count = heldout_sums(model, examples, pad_id, batch_size)
    return total / max(count, 1.0)


@torch.no_grad()
def heldout_sums(model, examples: list[RenderedExample], pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """(sum of weighted token cross-entropy, sum of weights): sums, so shards of processes add up."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        ids, mask, weights = collate(examples[i : i + batch_size], pad_id)
        loss_sum, w = weighted_token_loss(model, ids.to(device), mask.to(device), weights)
        total += loss_sum.item()
        count += w.item()
    model.train(was_training)
    return total, count


def _loss_function(cfg: TrainConfig, model, loaded, task, models_cfg: ModelsConfig, device, pad_id):
    """micro_batch_loss(items, step) -> (sum of per-unit losses, stats to log) for cfg.loss."""
    if cfg.loss == "sft":
        def sft(mb, step):
            ids, mask, weights = collate(mb, pad_id)
            loss_sum, _ = weighted_token_loss(model, ids.to(device), mask.to(device), weights)
            return loss_sum, {"tokens": int(mask.sum())}
        return sft
    if cfg.loss == "kd":
        def kd(mb, step):
            fn = label_kd_loss if hasattr(mb[0], "candidates") else token_kd_loss
            loss_sum, kl_sum = fn(model, mb, cfg.kd_alpha)
            return loss_sum, {"kl": kl_sum, "tokens": sum(e.num_tokens for e in mb)}
        return kd

    from .onpolicy import on_policy_loss, training_teacher

    teacher = training_teacher(models_cfg, model, loaded)

    def on_policy(mb, step):
        loss_sum, reverse_kl, sampled = on_policy_loss(model, loaded.tokenizer, task, teacher, mb, step=step, seed=cfg.seed,
                                                       temperature=cfg.onpolicy_temperature, kl=cfg.onpolicy_kl)
        return loss_sum, {"reverse_kl": reverse_kl, "sampled_tokens": sampled, "tokens": sampled}
    return on_policy


def _scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)


def _lora_model(base, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


def save_adapter(model, path: Path) -> None:
    """Write a PEFT adapter folder atomically."""
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)


def _training_fingerprint(records: list[LabeledExample], cfg: TrainConfig, models_cfg: ModelsConfig) -> str:
    """Hash of what a checkpoint is only valid for: data, targets, settings, student."""
    import hashlib

    blob = json.dumps([[r.id, r.status, r.messages] for r in records] + [training_settings(cfg), models_cfg.student], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The per-step statistics each loss reports (summed across processes by name,
# so every process must hold every key even when its shard is empty).
_STAT_KEYS = {"sft": ("tokens",), "kd": ("kl", "tokens"), "on-policy": ("reverse_kl", "sampled_tokens", "tokens")}


class _StopAtStepEnd:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current
    step (whose checkpoint is then saved); a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._saved = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n[promptdistill] stopping after this step (press Ctrl-C again to stop now)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _by_length(items: list) -> list:
    """Items sorted by token count (stable), so micro-batches carry little padding.

    On-policy items are plain records (their length is the student's sample,
    unknown here) and keep their order."""
    if items and hasattr(items[0], "num_tokens"):
        return sorted(items, key=lambda e: e.num_tokens)
    return items


def _step_groups(n: int, per_step: int, seed: int):
    """Yield the example indices of each optimiser step: a seeded shuffle per
    epoch, cut into groups of `per_step` (the last group of an epoch may be smaller)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for i in range(0, n, per_step):
            yield order[i : i + per_step]


def train_student(
    records: list[LabeledExample],
    run_dir,
    train_cfg: TrainConfig,
    models_cfg: ModelsConfig,
    heldout: list[LabeledExample] | None = None,
    progress: bool = True,
    task: Task | None = None,
) -> dict:
    """LoRA-train the student on teacher-labeled records; return a summary.

    `task` is needed by the `kd` and `on-policy` losses (label replies, the
    teacher's prompt). The held-out loss is the cross-entropy on the held-out
    records' targets whatever the training loss, so runs compare.

    Resumes from the newest checkpoint in `run_dir` made with the same data
    and settings, and ends with the adapter an uninterrupted run gives.
    """
    run_dir = Path(run_dir)
    dist = Distributed(cpu=resolve_device(models_cfg.device) == "cpu")
    if not dist.is_main:  # the main process holds the lock for all of them
        return _train(records, run_dir, train_cfg, models_cfg, heldout, progress, task, dist)
    with DirectoryLock(run_dir / ".lock", "this training directory"):
        return _train(records, run_dir, train_cfg, models_cfg, heldout, progress, task, dist)


def _training_items(mode: str, records, task: Task | None, tok, cfg: TrainConfig):
    """What the step loop consumes for `mode`, and the ids of records over max_length."""
    if mode != "sft" and task is None:
        raise PromptDistillError(f"loss {mode!r} needs the task (pass task=...)", field="train.loss")
    if mode == "sft":
        return render_for_training(records, tok, cfg.max_length)
    usable = [r for r in records if r.status == OK]
    if not usable:
        return [], []
    if mode == "kd":
        items = label_kd_examples(usable, task, tok) if kd_kind(usable) == "label" else token_kd_examples(usable, task, tok)
        sizes = [i.num_tokens for i in items]
    else:  # on-policy: the inputs, with room for the student's longest sample
        items = usable
        sizes = [len(render_prompt(tok, task.student_messages(r.text))) + task.config.max_new_tokens for r in usable]
    keep = [i for i, n in zip(items, sizes) if n <= cfg.max_length]
    return keep, [r.id for r, n in zip(usable, sizes) if n > cfg.max_length]


def _train(records, run_dir: Path, train_cfg: TrainConfig, models_cfg: ModelsConfig, heldout, progress: bool, task,
           dist: Distributed) -> dict:
    cfg = train_cfg
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    device_name = dist.device(resolve_device(models_cfg.device)) if dist.enabled else models_cfg.device
    loaded = load_model(models_cfg.student, device_name, models_cfg.dtype)
    tok = loaded.tokenizer
    pad_id = tok.pad_token_id
    train_set, too_long = _training_items(cfg.loss, records, task, tok, cfg)
    if not train_set:
        raise PromptDistillError("no usable training examples (all rejected or over train.max_length)", field="train")
    heldout_set = render_for_training(heldout, tok, cfg.max_length)[0] if heldout else []
    if too_long and dist.is_main:
        print(f"[promptdistill] {len(too_long)} training examples exceed max_length={cfg.max_length} tokens and are skipped: {too_long[:10]}")

    model = _lora_model(loaded.model, cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(train_set) / per_step)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = _scheduler(optimizer, cfg, total_steps)
    device = loaded.device
    micro_batch_loss = _loss_function(cfg, model, loaded, task, models_cfg, device, pad_id)

    fingerprint = _training_fingerprint(records, cfg, models_cfg)
    start, last_loss, last_heldout = 0, float("nan"), None
    found = latest_checkpoint(run_dir)
    if found is not None:
        saved = json.loads((found / "trainer_state.json").read_text(encoding="utf-8"))
        if saved.get("fingerprint") == fingerprint:
            state = load_checkpoint(found, model, optimizer, scheduler)
            start, last_loss, last_heldout = state["step"], state["last_loss"], state["last_heldout"]
            if dist.is_main:
                print(f"[promptdistill] resuming training from {found} (step {start} of {total_steps})", flush=True)
        else:
            dist.barrier()  # every process has read the checkpoint's state before the main one removes it
            if dist.is_main:
                print(f"[promptdistill] checkpoints in {found.parent} were made with other data or settings; starting over", flush=True)
                shutil.rmtree(found.parent)
    dist.broadcast_parameters(trainable)

    metrics_path = run_dir / "metrics.jsonl"
    metrics = tracker = None
    if dist.is_main:
        truncate_metrics(metrics_path, start)
        metrics = open(metrics_path, "a", encoding="utf-8")
        tracker = open_tracker(cfg.report_to, run_dir, cfg)

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if tracker is not None:
            tracker.log(record)

    groups = _step_groups(len(train_set), per_step, cfg.seed)
    for _ in range(start):
        next(groups)
    started = time.time()
    bar = tqdm(total=total_steps, initial=start, unit="step", desc=f"train ({cfg.loss})", disable=not (progress and dist.is_main))
    with _StopAtStepEnd() as stop:
        for step in range(start + 1, total_steps + 1):
            t0 = time.time()
            group = _by_length([train_set[i] for i in next(groups)])
            # Sorted, then dealt out round-robin: every process gets a similar mix of lengths.
            local = dist.shard(group)
            micro = [local[i : i + cfg.batch_size] for i in range(0, len(local), cfg.batch_size)]
            # sft averages over trained tokens, the other losses over examples; the
            # divisor is the whole step's, on every process, so shard gradients add up
            n_units = sum(e.num_trained for e in group) if cfg.loss == "sft" else len(group)
            if dist.enabled:
                # Dropout masks from (seed, step, rank): processes draw different masks,
                # and a resumed run draws the same ones without per-process RNG state.
                torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + dist.rank)
            loss_total, stats = 0.0, dict.fromkeys(_STAT_KEYS[cfg.loss], 0)
            for mb in micro:
                loss_sum, mb_stats = micro_batch_loss(mb, step)
                (loss_sum / n_units).backward()
                loss_total += loss_sum.item()
                for key, value in mb_stats.items():
                    stats[key] = stats.get(key, 0) + value
            if dist.enabled:
                dist.sum_gradients(trainable)
                keys = sorted(stats)
                summed = dist.sum_floats([loss_total] + [float(stats[k]) for k in keys], device)
                loss_total, stats = summed[0], dict(zip(keys, summed[1:]))
            # After the all-reduce: every process clips the same summed gradient.
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = loss_total / n_units
            elapsed = time.time() - t0
            tokens = stats.pop("tokens")
            log({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": last_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                 "tokens_per_s": tokens / elapsed, "examples": len(group),
                 **({"trained_tokens": n_units} if cfg.loss == "sft" else {k: v / len(group) for k, v in stats.items()})})
            if heldout_set and (step % cfg.eval_every == 0 or step == total_steps):
                total, count = dist.sum_floats(list(heldout_sums(model, dist.shard(heldout_set), pad_id)), device)
                last_heldout = total / max(count, 1.0)
                log({"step": step, "heldout_loss": last_heldout})
            stopping = dist.any(stop.requested, device)
            if step % cfg.save_every == 0 or step == total_steps or stopping:
                if dist.is_main:
                    save_checkpoint(run_dir, step, model, optimizer, scheduler, fingerprint,
                                    {"last_loss": last_loss, "last_heldout": last_heldout})
                dist.barrier()  # a checkpoint is whole before any process can stop or go on
            bar.set_postfix(loss=f"{last_loss:.4f}", **({"heldout": f"{last_heldout:.4f}"} if last_heldout is not None else {}))
            bar.update(1)
            if stopping:
                bar.close()
                if dist.is_main:
                    print(f"[promptdistill] stopped after step {step}; rerun the same command to continue", flush=True)
                raise KeyboardInterrupt
    bar.close()
    if metrics is not None:
        metrics.close()
    if tracker is not None:
        tracker.finish()
    summary = {
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "train_examples": len(train_set),
        "skipped_too_long": too_long,
        "loss": cfg.loss,
        "final_loss": last_loss,
        "final_heldout_loss": last_heldout,
        "seconds": time.time() - started,
        "student": models_cfg.student,
        "processes": dist.world,
        "adapter": str(run_dir / "adapter"),
    }
    if dist.is_main:
        save_adapter(model, run_dir / "adapter")
        atomic_write_json(run_dir / "train_summary.json", summary)
    dist.barrier()  # the adapter is on disk when any process returns
    return summary
