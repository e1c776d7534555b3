"""Training the student: LoRA fine-tuning without the prompt, as a recipe in named steps.

`train_student(cfg, records, run_dir)` runs a `DistillationRecipe`:

    setup       _setup_model (student, 4-bit and checkpointing as set (precision.py), + LoRA:
                fresh, or train.init_adapter's), _setup_data
                (data.py, and data.mix_general's items), _setup_optimizer (AdamW +
                schedule), _setup_loss (cfg.train.loss), then _resume
    train       the loop: one _train_step per optimiser step, held-out
                evaluation, checkpoints, a clean stop on Ctrl-C / SIGTERM
    _finish     the adapter and train_summary.json
    cleanup     closes the metrics file, whatever happened

The steps are methods of one object, rather than one long function, so
each reads on its own and the loop reads on one screen; the state they share
(model, optimiser, progress) is the recipe's. The loop is plain PyTorch and
only the LoRA parameters are trained. What the student matches is
`train.loss` (losses.py, onpolicy.py):

- sft: the loss is the weighted mean of per-token cross-entropy over all
  weighted tokens of an optimiser step;
- kd: KL from the teacher's stored soft labels, mean over the step's examples;
- on-policy: the student samples, the teacher scores; mean over the step's examples.

With data.mix_general, general items (the base's own replies to general
prompts, general_mix.py) join the items of any loss and are trained with
cross-entropy: per token with sft, per example (each item's mean) with kd
and on-policy, where they count as examples.

Per-unit losses are summed over micro-batches and divided by the step's
total, so gradient accumulation gives the same result as one big batch. The
same sum makes the order of a step's items irrelevant, so each step's group is
sorted by length before it is cut into micro-batches, and each micro-batch
runs in pieces of similar length (less padding and fewer activations held at
once, same loss up to float rounding; data.padding_pieces). Around every
step glibc is set to hand freed activations back (memory.py). Under
torchrun / accelerate launch each process trains on its shard of every step
and the gradients are summed across processes (distributed.py); only the
main process writes the run directory.

The run directory receives:

    metrics.jsonl             one line per step (loss, lr, tokens/s) and per held-out evaluation
    general_mix.jsonl         with data.mix_general: the base model's replies trained on (general_mix.py)
    checkpoints/step-N/       every `save_every` steps and at the end: adapter, optimizer,
                              scheduler and RNG state (see checkpoint.py); a rerun resumes
                              from the newest one and ends with the same adapter
    adapter/                  the final PEFT adapter
    train_summary.json        steps, losses, time, examples skipped for length
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

from ..config import LOSSES, Config, TrainConfig
from ..errors import PromptDistillError
from ..io import DirectoryLock, atomic_directory, atomic_write_json, check_paths, fingerprint, read_settings, resume_or_refuse
from ..models import load_model, resolve_device
from ..overrides import check_training_precision
from ..progress import progress_bar
from ..records import LabeledExample
from ..replychecks import parse_checks
from ..render import RenderedExample
from ..rundir import STAGE_OUTPUTS, RunDir, check_outside_runs, looks_like_run
from ..task import Task
from .checkpoint import checkpoint_settings, latest_checkpoint, load_checkpoint, save_checkpoint, truncate_metrics
from .data import (by_length, collate, filter_by_checks, micro_batches, padding_pieces, render_for_training, sampling_weights, step_groups,
                   training_items)
from .distributed import Distributed, launched_rank
from .general_mix import GeneralExample
from .init_adapter import init_adapter_folder, init_adapter_model
from .losses import label_kd_loss, per_example_token_loss, token_kd_loss, weighted_token_loss
from .memory import return_freed_memory, trim
from .precision import autocast, autocast_dtype, prepare_base
from .tracking import open_tracker


def train_student(cfg: Config, records: list[LabeledExample], run_dir, *, heldout: list[LabeledExample] | None = None,
                  progress: bool = True) -> dict:
    """LoRA-train the student on teacher-labeled records; return the summary.

    Everything comes from `cfg`: the training settings (cfg.train), the student
    and, for on-policy, the teacher (cfg.models), and the task that kd and
    on-policy read replies and the teacher's prompt from (cfg.task). The
    held-out loss is the cross-entropy on the held-out records' targets
    whatever the training loss, so runs compare.

    Resumes from the newest checkpoint in `run_dir` made with the same data
    and settings, and ends with the adapter an uninterrupted run gives.
    Before anything is written `run_dir` is checked (`check_training_folder`).
    """
    check_training_folder(cfg, run_dir)
    with training_lock(run_dir) if launched_rank() == 0 else contextlib.nullcontext():
        return train_folder(cfg, records, run_dir, heldout=heldout, progress=progress)


def train_folder(cfg: Config, records: list[LabeledExample], run_dir, *, heldout: list[LabeledExample] | None = None,
                 progress: bool = True) -> dict:
    """`train_student` into a folder its caller has checked and locked (the train
    stage of a run, under the run's lock: one lock per run, RUN/.lock)."""
    recipe = DistillationRecipe(cfg, run_dir, progress=progress)
    try:
        recipe.setup(records, heldout or [])
        return recipe.train()
    finally:
        recipe.cleanup()


def training_lock(folder) -> DirectoryLock:
    """The lock a training folder is written under: a run's train/ (as a notebook trains
    a run) is written under the run's own lock, RUN/.lock, the one every command on
    the run takes; any other folder under its own FOLDER/.lock."""
    folder = Path(folder)
    if folder.name == STAGE_OUTPUTS["train"] and looks_like_run(folder.parent):
        return RunDir(folder.parent).lock()
    return DirectoryLock(folder / ".lock", "this training folder")


def _check_config(cfg: Config) -> None:
    if not isinstance(cfg, Config):  # e.g. cfg.train alone, as train_student took before it took the whole Config
        raise TypeError(f"train_student takes the whole Config first: train_student(cfg, records, run_dir), not {type(cfg).__name__}")
    if cfg.train.loss not in LOSSES:  # a Config built in code skips load_config's checks
        raise PromptDistillError(f"must be one of {', '.join(LOSSES)}; got {cfg.train.loss!r}", field="train.loss")


def check_training_folder(cfg: Config, run_dir) -> Path:
    """The folder training writes: not a file, not inside a run directory unless it
    is that run's own train/ (as the pipeline and a notebook train), and not
    holding or held in the adapter training starts from (train.init_adapter); and
    the precision settings possible on this machine (4-bit, autocast)."""
    _check_config(cfg)
    check_training_precision(cfg)
    p = Path(run_dir)
    if p.exists() and not p.is_dir():
        raise PromptDistillError("the training folder is a file, expected a folder", path=p)
    check_outside_runs(p, "the training folder", own_entries=(STAGE_OUTPUTS["train"],))
    check_paths({"train.init_adapter": init_adapter_folder(cfg)}, {"the training folder": p})
    return p


# The per-step statistics each loss reports (summed across processes by name,
# so every process must hold every key even when its shard is empty).
_STAT_KEYS = {"sft": ("tokens",), "kd": ("kl", "tokens"), "on-policy": ("reverse_kl", "sampled_tokens", "tokens")}
# ... and those of the general items, with data.mix_general: their loss summed and its units.
_GENERAL_STAT_KEYS = ("general_loss", "general_units")


class DistillationRecipe:
    """One training run of the student, step by step (see the module docstring)."""

    def __init__(self, cfg: Config, run_dir, *, progress: bool = True):
        _check_config(cfg)
        self.cfg, self.train_cfg, self.models_cfg = cfg, cfg.train, cfg.models
        self.task = Task(cfg.task)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dist = Distributed(cpu=resolve_device(cfg.models.device) == "cpu")
        self._metrics = self._tracker = None

    def lock(self):
        """The lock of the folder it writes (`training_lock`), held by the main process for all
        of them; for a recipe driven step by step (train_folder's callers hold it already)."""
        if not self.dist.is_main:
            return contextlib.nullcontext()
        return training_lock(self.run_dir)

    # ---- setup ---------------------------------------------------------------

    def setup(self, records: list[LabeledExample], heldout: list[LabeledExample]) -> None:
        random.seed(self.train_cfg.seed)
        torch.manual_seed(self.train_cfg.seed)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # Under a launcher, fail fast (before any model loads) when the processes
        # do not share the run folder or read different data (distributed.py).
        self.dist.check_shared_folder(self.run_dir)
        self.dist.agree({"labeled records": fingerprint([[r.id, r.status, r.messages] for r in records]),
                         "held-out records": fingerprint([[r.id, r.messages] for r in heldout]),
                         "settings": fingerprint(self.cfg.to_dict())}, "their data or settings")
        self._setup_model()
        self._setup_data(records, heldout)
        found = latest_checkpoint(self.run_dir)
        self.dist.agree({"settings fingerprint": fingerprint(self.settings), "training items": len(self.train_set),
                         "total steps": self.total_steps,
                         "checkpoint": str(found.relative_to(self.run_dir)) if found else None}, "the training plan")
        self._setup_optimizer()
        self._setup_loss()
        self._resume()
        self.dist.agree({"start step": self.start_step}, "the step to resume from")
        self._open_logs()

    def _setup_model(self) -> None:
        """The student with LoRA adapters, in training mode, on this process's device:
        fresh ones, or train.init_adapter's (its own LoRA shape; init_adapter.py)."""
        m = self.models_cfg
        init_adapter = init_adapter_folder(self.cfg)  # checked before a model is loaded
        device = self.dist.device(resolve_device(m.device)) if self.dist.enabled else m.device
        loaded = load_model(m.student, device, m.dtype, load_in_4bit=m.load_in_4bit)
        self.tokenizer, self.device = loaded.tokenizer, loaded.device
        self.autocast_dtype = autocast_dtype(self.cfg, self.device)
        base = prepare_base(loaded.model, self.cfg)  # 4-bit, checkpointing (precision.py)
        if init_adapter is None:
            self.model = lora_model(base, self.train_cfg)
        else:
            self.model = init_adapter_model(base, init_adapter, self.train_cfg, say=self._say)
            self._say(f"training starts from the adapter {init_adapter}")
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _setup_data(self, records: list[LabeledExample], heldout: list[LabeledExample]) -> None:
        """The items of the loss (data.py), the rendered held-out set, and the number of steps."""
        cfg = self.train_cfg
        labeled, self.failed_checks = records, []
        if cfg.reply_filter == "checks":
            records, self.failed_checks = filter_by_checks(records, parse_checks(self.cfg.eval.checks))
            self._say(f"train.reply_filter: {len(self.failed_checks)} of {len(self.failed_checks) + sum(r.trainable for r in records)} "
                      "teacher replies fail an [[eval.checks]] rule and are left out")
        task_items, self.too_long = training_items(records, self.task, self.tokenizer, cfg)
        if not task_items:
            raise PromptDistillError("no usable training examples (all rejected, failing the checks or over train.max_length)",
                                     field="train")
        general, general_rows = self._general_items(len(task_items))
        self.train_set, self.n_general = task_items + general, len(general)
        self.heldout_set = render_for_training(heldout, self.tokenizer, cfg.max_length)[0]
        # train.balance: how step_groups draws the items (None: a shuffle per epoch)
        self.sample_weights = sampling_weights(records, self.too_long, cfg, general=len(general))
        # Of the records as labeled: the filter is a setting (checkpoint_settings names its checks).
        self.settings = checkpoint_settings(labeled, self.cfg, general_rows)
        if self.too_long:
            self._say(f"{len(self.too_long)} training examples exceed max_length={cfg.max_length} tokens "
                      f"and are skipped: {self.too_long[:10]}")
        self.per_step = cfg.batch_size * cfg.grad_accum
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.per_step)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

    def _general_items(self, task_items: int) -> tuple[list[GeneralExample], list[dict]]:
        """data.mix_general's items and the rows of RUN/train/general_mix.jsonl they come
        from (general_mix.py): the file is reused when it matches, else the main
        process generates it with the adapter switched off (the untouched base)
        while the others wait, and every process trains on what the file holds."""
        from ..models import AdapterDisabled
        from .general_mix import (FILE_NAME, base_replies, drawn_prompts, general_count, general_examples, mix_matches,
                                  read_mix, write_mix)

        mix, cfg = self.cfg.data.mix_general, self.train_cfg
        n = general_count(mix, task_items)
        if n == 0:
            return [], []
        drawn = drawn_prompts(n, cfg.seed)
        distinct = drawn[: len(set(drawn))]  # the order repeats past the pool's end
        path, student = self.run_dir / FILE_NAME, self.models_cfg.student
        if self.dist.is_main and not mix_matches(read_mix(path), distinct, student):
            self._say(f"data.mix_general: generating the base model's replies to {len(distinct)} general prompts (once, into {path})")
            self.model.eval()
            try:
                replies = base_replies(AdapterDisabled(self.model), self.tokenizer, [prompt for _, prompt in distinct])
            finally:
                self.model.train()
            write_mix(path, distinct, replies, student)
        self.dist.barrier()  # the file is whole before any other process reads it
        rows = read_mix(path)
        if not mix_matches(rows, distinct, student):
            raise PromptDistillError("changed while training started (another command on this run?); rerun", path=path)
        items = general_examples(rows, n, self.tokenizer)
        fitting = [e for e in items if e.num_tokens <= cfg.max_length]
        repeats = f"; the pool has {len(distinct)} prompts, so they repeat (up to {math.ceil(n / len(distinct))} times each)" \
            if n > len(distinct) else ""
        over = f"; {n - len(fitting)} over train.max_length={cfg.max_length} left out" if len(fitting) < n else ""
        self._say(f"data.mix_general = {mix}: {len(fitting)} of {task_items + len(fitting)} training items are the base model's "
                  f"replies to general prompts{repeats}{over}")
        return fitting, rows

    def _setup_optimizer(self) -> None:
        """AdamW over the LoRA parameters, and the learning-rate schedule over all steps."""
        from transformers import get_scheduler

        cfg = self.train_cfg
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.lr_schedule]
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=self.total_steps)

    def _setup_loss(self) -> None:
        """micro_batch_loss(items, step) -> (sum of per-unit losses, stats to log), for train.loss."""
        self.stat_keys = _STAT_KEYS[self.train_cfg.loss] + (_GENERAL_STAT_KEYS if self.cfg.data.mix_general else ())
        if self.train_cfg.loss == "sft":
            self.micro_batch_loss = self._sft_loss
        elif self.train_cfg.loss == "kd":
            self.micro_batch_loss = self._kd_loss
        else:  # on-policy
            self.teacher = self._setup_teacher()
            self.micro_batch_loss = self._on_policy_loss

    def _setup_teacher(self):
        """The on-policy teacher (a teachers.Teacher): reads the prompt and scores the
        student's samples; the student's own base weights when it is the same model."""
        from .onpolicy import training_teacher

        return training_teacher(self.models_cfg, self.model, self.tokenizer, self.device)

    def _resume(self) -> None:
        """Continue from the newest checkpoint made with the same data and settings;
        remove checkpoints made with others. Sets the step to start after."""
        self.start_step, self.last_loss, self.last_heldout = 0, float("nan"), None
        found = latest_checkpoint(self.run_dir)
        if found is not None:
            def discard():
                self.dist.barrier()  # every process has read the checkpoint's state before the main one removes it
                if self.dist.is_main:
                    shutil.rmtree(found.parent)

            stored = read_settings(found / "trainer_state.json", key="settings",
                                   corrupt=f"corrupt checkpoint; delete {found} to resume from an earlier one")
            changed = resume_or_refuse(stored, self.settings, force=True, what="checkpoints were made", discards="them",
                                       discard=discard, path=found.parent)
            if changed:
                self._say(f"checkpoints in {found.parent} were made with other data or settings ({', '.join(changed[:8])}); "
                          "starting over")
            else:
                state = load_checkpoint(found, self.model, self.optimizer, self.scheduler)
                self.start_step, self.last_loss, self.last_heldout = state["step"], state["last_loss"], state["last_heldout"]
                self._say(f"resuming training from {found} (step {self.start_step} of {self.total_steps})")
        self.dist.broadcast_parameters(self.trainable)

    def _open_logs(self) -> None:
        """metrics.jsonl (cut back to the resumed step) and the optional tracker: main process only."""
        if not self.dist.is_main:
            return
        metrics_path = self.run_dir / "metrics.jsonl"
        truncate_metrics(metrics_path, self.start_step)
        self._metrics = open(metrics_path, "a", encoding="utf-8")
        self._tracker = open_tracker(self.train_cfg.report_to, self.run_dir, self.train_cfg)

    # ---- the loop -------------------------------------------------------------

    def train(self) -> dict:
        """Run the steps from the resumed one to the last; return the summary. A first
        Ctrl-C / SIGTERM stops after the step in progress, checkpointed (KeyboardInterrupt)."""
        cfg = self.train_cfg
        groups = step_groups(len(self.train_set), self.per_step, cfg.seed, self.sample_weights)
        for _ in range(self.start_step):  # the data order is a function of the seed: skip what is done
            next(groups)
        started = time.time()
        bar = progress_bar(total=self.total_steps, initial=self.start_step, unit="step", desc=f"train ({cfg.loss})",
                   disable=not (self.progress and self.dist.is_main))
        stopping = False
        with _StopAtStepEnd() as stop:
            for step in range(self.start_step + 1, self.total_steps + 1):
                # Sorted by length here and dealt out round-robin in _train_step:
                # little padding, and every process gets a similar mix of lengths.
                group = by_length([self.train_set[i] for i in next(groups)])
                self._train_step(step, group)
                if self.heldout_set and (step % cfg.eval_every == 0 or step == self.total_steps):
                    self._evaluate(step)
                stopping = self.dist.any(stop.requested, self.device)
                if step % cfg.save_every == 0 or step == self.total_steps or stopping:
                    self._save_checkpoint(step)
                self._show_progress(bar)
                if stopping:
                    break
        bar.close()
        if stopping:
            self._say(f"stopped after step {step}; rerun the same command to continue")
            raise KeyboardInterrupt
        return self._finish(seconds=time.time() - started)

    def _train_step(self, step: int, group: list) -> None:
        """One optimiser step on `group`: this process's share, gradients summed
        across processes, clipped, applied, and the step's metrics logged."""
        cfg, dist = self.train_cfg, self.dist
        started = time.time()
        # sft averages over trained tokens, the other losses over examples; the
        # divisor is the whole step's, on every process, so shard gradients add up.
        # General items (data.mix_general) count as what the loss counts: their
        # trained tokens with sft, one example each otherwise (_general_loss).
        n_units = sum(e.num_trained for e in group) if cfg.loss == "sft" else len(group)
        n_general = sum(isinstance(e, GeneralExample) for e in group)
        if dist.enabled:
            # Dropout masks from (seed, step, rank): processes draw different masks,
            # and a resumed run draws the same ones without per-process RNG state.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + dist.rank)
        loss_total, stats = self._loss_step(step, dist.shard(group), n_units)
        if dist.enabled:
            dist.sum_gradients(self.trainable)
            keys = sorted(stats)
            summed = dist.sum_floats([loss_total] + [float(stats[k]) for k in keys], self.device)
            loss_total, stats = summed[0], dict(zip(keys, summed[1:]))
        # After the all-reduce: every process clips the same summed gradient.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm or math.inf))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        trim()
        self.last_loss = loss_total / n_units
        tokens = stats.pop("tokens")
        general = {}
        if self.cfg.data.mix_general:
            # the general items' mean loss (per token with sft, per item otherwise); None in a step without any
            loss_sum, units = stats.pop("general_loss"), stats.pop("general_units")
            general = {"general_items": n_general, "general_loss": loss_sum / units if units else None}
        n_task = max(len(group) - n_general, 1)  # the loss's own statistics are per task example
        self._log({"step": step, "epoch": round(step / self.steps_per_epoch, 3), "loss": self.last_loss,
                   "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "tokens_per_s": tokens / (time.time() - started), "examples": len(group),
                   **({"trained_tokens": n_units} if cfg.loss == "sft" else {k: v / n_task for k, v in stats.items()}),
                   **general})

    def _loss_step(self, step: int, items: list, n_units: int) -> tuple[float, dict]:
        """Backpropagate this process's `items` in micro-batches, each divided by
        the step's `n_units`; return the summed loss and statistics.

        A micro-batch is split by item type: the task's items go to the loss of
        train.loss, the general items (data.mix_general) to _general_loss."""
        loss_total, stats = 0.0, dict.fromkeys(self.stat_keys, 0)
        return_freed_memory()  # see memory.py: the step's activations go back to the system when freed
        for micro_batch in micro_batches(items, self.train_cfg.batch_size):
            task = [e for e in micro_batch if not isinstance(e, GeneralExample)]
            general = [e for e in micro_batch if isinstance(e, GeneralExample)]
            for loss, part in ((self.micro_batch_loss, task), (self._general_loss, general)):
                if not part:
                    continue
                # Pieces of similar length rather than one batch padded to its longest (data.padding_pieces).
                for batch in padding_pieces(part):
                    with autocast(self.autocast_dtype, self.device):  # train.autocast (precision.py)
                        loss_sum, batch_stats = loss(batch, step)
                    (loss_sum / n_units).backward()
                    loss_total += loss_sum.item()
                    for key, value in batch_stats.items():
                        stats[key] = stats.get(key, 0) + value
        return loss_total, stats

    def _general_loss(self, batch: list[GeneralExample], step: int):
        """Cross-entropy on the base's replies: summed per token with sft (more sft items),
        each item's mean with kd and on-policy (one unit, like their examples)."""
        ids, mask, weights = collate(batch, self.tokenizer.pad_token_id)
        per_item = per_example_token_loss if self.train_cfg.loss != "sft" else weighted_token_loss
        loss_sum, units = per_item(self.model, ids.to(self.device), mask.to(self.device), weights)
        return loss_sum, {"general_loss": loss_sum.item(), "general_units": float(units), "tokens": int(mask.sum())}

    def _sft_loss(self, batch: list[RenderedExample], step: int):
        ids, mask, weights = collate(batch, self.tokenizer.pad_token_id)
        loss_sum, _ = weighted_token_loss(self.model, ids.to(self.device), mask.to(self.device), weights)
        return loss_sum, {"tokens": int(mask.sum())}

    def _kd_loss(self, batch: list, step: int):
        loss = label_kd_loss if hasattr(batch[0], "candidates") else token_kd_loss
        loss_sum, kl_sum = loss(self.model, batch, self.train_cfg.kd_alpha)
        return loss_sum, {"kl": kl_sum, "tokens": sum(e.num_tokens for e in batch)}

    def _on_policy_loss(self, batch: list[LabeledExample], step: int):
        from .onpolicy import on_policy_loss

        cfg = self.train_cfg
        loss_sum, reverse_kl, sampled = on_policy_loss(self.model, self.tokenizer, self.task, self.teacher, batch, step=step,
                                                       seed=cfg.seed, temperature=cfg.onpolicy_temperature, kl=cfg.onpolicy_kl)
        return loss_sum, {"reverse_kl": reverse_kl, "sampled_tokens": sampled, "tokens": sampled}

    def _evaluate(self, step: int) -> None:
        """The held-out loss, each process scoring its shard."""
        sums = heldout_sums(self.model, self.dist.shard(self.heldout_set), self.tokenizer.pad_token_id)
        total, count = self.dist.sum_floats(list(sums), self.device)
        self.last_heldout = total / max(count, 1.0)
        self._log({"step": step, "heldout_loss": self.last_heldout})

    def _show_progress(self, bar) -> None:
        heldout = {"heldout": f"{self.last_heldout:.4f}"} if self.last_heldout is not None else {}
        bar.set_postfix(loss=f"{self.last_loss:.4f}", **heldout)
        bar.update(1)

    def _save_checkpoint(self, step: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir, step, self.model, self.optimizer, self.scheduler, self.settings,
                            {"last_loss": self.last_loss, "last_heldout": self.last_heldout})
        self.dist.barrier()  # a checkpoint is whole before any process can stop or go on

    # ---- the end ----------------------------------------------------------------

    def _finish(self, seconds: float) -> dict:
        """Write the adapter and train_summary.json; return the summary."""
        self._close_logs(finish_tracker=True)
        summary = {
            "steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "train_examples": len(self.train_set) - self.n_general,
            "skipped_too_long": self.too_long,
            **({"failed_checks": len(self.failed_checks)} if self.train_cfg.reply_filter != "none" else {}),
            "loss": self.train_cfg.loss,
            "final_loss": self.last_loss,
            "final_heldout_loss": self.last_heldout,
            "seconds": seconds,
            "student": self.models_cfg.student,
            "processes": self.dist.world,
            "adapter": str(self.run_dir / "adapter"),
        }
        if self.cfg.data.mix_general:
            summary["general_items"] = self.n_general
        if self.train_cfg.init_adapter is not None:
            summary["init_adapter"] = str(self.cfg.resolve_path(self.train_cfg.init_adapter))
        if self.dist.is_main:
            save_adapter(self.model, self.run_dir / "adapter")
            atomic_write_json(self.run_dir / "train_summary.json", summary)
        self.dist.barrier()  # the adapter is on disk when any process returns
        return summary

    def cleanup(self) -> None:
        """Close the metrics file, also after an error or a stop."""
        # Only a finished run finishes the tracker: W&B would record a stopped run as a successful one.
        self._close_logs(finish_tracker=False)

    def _close_logs(self, finish_tracker: bool) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if finish_tracker and self._tracker is not None:
            self._tracker.finish()
            self._tracker = None

    def _log(self, record: dict) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        if self._tracker is not None:
            self._tracker.log(record)

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[promptdistill] {message}", flush=True)


# ---- pieces the recipe composes (also used by tests and benchmarks) -------------


def lora_model(base, cfg: TrainConfig):
    """`base` wrapped with fresh LoRA adapters as `cfg` sets them; only they are trainable."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def save_adapter(model, path: Path) -> None:
    """Write a PEFT adapter folder atomically."""
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)


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
    for batch in micro_batches(examples, batch_size):
        ids, mask, weights = collate(batch, pad_id)
        loss_sum, w = weighted_token_loss(model, ids.to(device), mask.to(device), weights)
        total += loss_sum.item()
        count += w.item()
    model.train(was_training)
    return total, count


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
