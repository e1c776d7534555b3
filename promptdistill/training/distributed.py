"""Several training processes through accelerate: data parallelism without a DDP wrapper.

`torchrun --nproc_per_node N -m promptdistill train ...` and
`accelerate launch -m promptdistill train ...` start N copies of the same
command. accelerate's `PartialState` reads the launcher's environment and
sets up the process group (gloo on CPU, NCCL on GPUs); nothing else of
accelerate is needed, because the training loop does its own data
parallelism:

- every process computes the same sequence of step groups (they are a pure
  function of the seed) and takes the items `group[rank::world]` of each;
- each process backpropagates its shard's loss divided by the step's
  *global* number of units (tokens for sft, examples otherwise), so the sum
  of the processes' gradients is exactly the one-process gradient;
- the LoRA gradients are summed across processes (one all-reduce of a flat
  buffer) before `optimizer.step()`, so every process holds identical weights.

The model is not wrapped in `DistributedDataParallel`: the losses call the
decoder and the output layer separately (losses.logits_at, to skip the
vocabulary projection at zero-weight positions), which a DDP wrapper's
forward would not see. The trainable parameters are LoRA adapters (a few MB),
so one all-reduce per step costs little; the base weights are replicated on
every process, not sharded.

Every process must make the same plan, or they wait on each other forever (a
collective one process never reaches) or train on different data without a
word. So before training the processes agree (`agree`): each computes the
plan (what its labeled records hash to, the settings, the number of items and
steps, the checkpoint it would resume from, the step it resumes at), they
exchange it, and on any difference every process stops with the same one-line
error naming the processes and what differs. And the run folder must be one
folder for all of them (`check_shared_folder`): the main process writes a
random token into it, and a process that cannot read it back is on another
file system.

With one process (no launcher) `Distributed` is inert: no process group,
no collective, and the loop is exactly the single-process loop.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch

from ..errors import PromptDistillError
from ..io import atomic_write_text, temp_prefix


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, accelerate launch) started; 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without one); needs no process group."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class Distributed:
    """Rank information and the few collectives the training loop needs.

    `cpu`: the processes train on CPU (gloo); accelerate only sets up a CPU
    process group when told so."""

    def __init__(self, cpu: bool = False):
        self.world = launched_world_size()
        self.rank = 0
        self.local_rank = 0
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=cpu)  # initialises torch.distributed from the launcher's environment
            self.rank = self.state.process_index
            self.local_rank = self.state.local_process_index
            self.world = self.state.num_processes

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, resolved: str) -> str:
        """The device of this process: on GPUs each process takes its own (cuda:LOCAL_RANK)."""
        if self.enabled and resolved == "cuda":
            return str(self.state.device)
        return resolved

    def shard(self, items: list) -> list:
        return items[self.rank :: self.world] if self.enabled else items

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def agree(self, plan: dict, what: str) -> None:
        """Stop every process, with one line, unless all computed the same `plan`
        (small JSON-like values by name) as the main process. All processes take
        part, so none is left waiting in a later collective."""
        if not self.enabled:
            return
        plans: list = [None] * self.world
        torch.distributed.all_gather_object(plans, plan)
        main = plans[0]
        differ = {rank: sorted(k for k in p.keys() | main.keys() if p.get(k) != main.get(k))
                  for rank, p in enumerate(plans) if p != main}
        if differ:
            shown = "; ".join(f"process {rank}: {', '.join(keys)}" for rank, keys in sorted(differ.items()))
            raise PromptDistillError(f"the {self.world} training processes disagree on {what} with process 0 ({shown}): every "
                                     "process must read the same labeled files and run folder, unchanged while training starts")

    def check_shared_folder(self, folder) -> None:
        """Stop every process, with one line, unless they all see the same `folder`:
        the main process writes a random token there, and every other one must read
        it back (a run folder on each machine's own disk would split checkpoints
        and the adapter between them)."""
        if not self.enabled:
            return
        folder = Path(folder)
        token = secrets.token_hex(16)
        marker = folder / f"{temp_prefix(folder / 'shared-check')}{token[:8]}"
        if self.is_main:
            atomic_write_text(marker, token)
        sent = [marker.name, token]  # the name: each process looks in the folder it was given
        torch.distributed.broadcast_object_list(sent, src=0)
        try:
            seen = (folder / sent[0]).read_text(encoding="utf-8") == sent[1]
        except OSError:
            seen = False
        views: list = [None] * self.world
        torch.distributed.all_gather_object(views, seen)  # also: nobody reads after the file is gone
        if self.is_main:
            marker.unlink(missing_ok=True)
        blind = [rank for rank, ok in enumerate(views) if not ok]
        if blind:
            raise PromptDistillError(f"process {', '.join(map(str, blind))} of {self.world} cannot see what process 0 wrote into "
                                     "the run folder: with several processes (or machines) the run folder must be on a "
                                     "shared file system, the same path on every one", path=folder)

    def sum_floats(self, values: list[float], device) -> list[float]:
        """Element-wise sum of a list of floats over all processes."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device) -> bool:
        """True on every process when it is true on one (a stop request must be collective,
        or the processes would disagree on the number of steps and wait for each other forever)."""
        if not self.enabled:
            return flag
        return self.sum_floats([1.0 if flag else 0.0], device)[0] > 0

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients over processes in place (a process whose shard was empty adds zeros)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Copy the main process's values into every process (guards against any init drift)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)


def end_process_group() -> None:
    """Destroy the launcher's process group, if one was set up, before the process exits.

    Left to the interpreter's exit, gloo's process group is torn down while its
    threads may still run, and a process can then abort ("terminate called
    without an active exception", SIGABRT) after training finished and its
    files were written: torchrun reports the run as failed. Called once by the
    `train` command after training; a Python caller training several times in
    one process keeps the group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no process leaves while another still talks to it
        torch.distributed.destroy_process_group()
