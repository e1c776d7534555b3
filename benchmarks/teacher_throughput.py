"""Teacher labeling throughput: promptdistill's fast path against two baselines.

Labels the same inputs of the example data set, greedy decoding, three ways
in one run:

  (a) naive: one full-prompt request per input, as the tutorial's hosted recipe does
      (label_inputs with reuse_prefix=False, batch_size=1);
  (b) plain: what a practitioner writes instead, without this package's
      engine: full prompts, left-padded, transformers' `model.generate` in
      batches of 64 (`plain_generate`; generate mode only);
  (c) fast: the shared prompt prefix runs once, inputs run in batches on top
      of its cache (label_inputs defaults: models.prefix_attention = "auto",
      cascade attention on CPU, expand elsewhere);
  (d) the other prefix strategy than the one auto picked (expand on CPU,
      cascade elsewhere), so both strategies have a column on every device;
  (e) generate_batch: transformers' own continuous batching
      (`model.generate_batch`: paged attention, prefix sharing in recent
      releases) over the full prompts, generate mode only. Where the installed
      transformers has no generate_batch, or it fails, the column says so and
      the script goes on.

It checks that they give identical replies and labels (in float32; random
bfloat16 weights have nearly flat logits, so there it reports the share of
equal answers), prints inputs/s for each, does the same for `choose` mode
(naive and fast), and prints the ratios fast / naive and
each column against plain batched generate (cascade, expand,
generate_batch, and as its last line fast / plain). The columns are measured
interleaved (the naive loop in --rounds slices, each followed by one fast run
over all inputs; the other strategy, plain and generate_batch run over all
inputs after --plain-rounds of those rounds, and every ratio to plain
compares them with the fast runs of the same rounds), so a shared machine's
changes of speed over minutes hit them alike. Replies of plain and
generate_batch are compared with the fast path's (in float32 they should be
the same; the counts are printed either way).

The teacher is the task's (the packaged SmolLM2-135M-Instruct), or `--model`
(a model id or folder), or `--random-weights {135m,1.5b,8b}`: random weights
of those shapes built on the device (Llama-style configs with SmolLM2's
vocabulary and tokenizer; 1.5b is Qwen2.5-1.5B-like, 8b Llama-3-8B-like),
for speed on a GPU where no weights can be downloaded; their answers mean
nothing. `--prompt-repeat K` repeats the prompt's rules K times (a longer
prompt, as a stand-in for a long policy document).

When vLLM is installed (`make test-vllm` builds .venv-vllm) a fourth column labels the
same inputs with vLLM's offline engine (prefix caching on, float32,
`enforce_eager` on CPU); its engine start is timed and printed apart, and
its answers are checked against the fast path's (replies equal; choose-mode
labels equal and distributions within 1e-4). Without vLLM the column is
left out with a note.

    .venv/bin/python benchmarks/teacher_throughput.py [--n 64] [--batch-size 64] [--rounds 4]
    .venv/bin/python benchmarks/teacher_throughput.py --device cuda --random-weights 1.5b --dtype bfloat16 --prompt-repeat 7
    .venv-vllm/bin/python benchmarks/teacher_throughput.py      # with the vLLM column
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.config import load_config  # noqa: E402
from promptdistill.records import read_inputs  # noqa: E402
from promptdistill.split import subsample  # noqa: E402
from promptdistill.labeling import label_inputs  # noqa: E402
from promptdistill.prefix_cache import strategy_for  # noqa: E402
from promptdistill.render import end_of_turn_ids, render_prompt  # noqa: E402
from promptdistill.task import Task  # noqa: E402
from promptdistill.teachers.local import LocalTeacher  # noqa: E402
from promptdistill.teachers.records import decode_reply  # noqa: E402

# Model shapes for --random-weights, all with SmolLM2's 49,152-token vocabulary.
SIZES = {
    # SmolLM2-135M's own shape
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 tie_word_embeddings=True),
    # Qwen2.5-1.5B-like dense shape
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 tie_word_embeddings=True),
    # Llama-3-8B-like dense shape
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               tie_word_embeddings=False),
    # a few layers, to try this script (and gpu_check.py) on a CPU in seconds
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=True),
}


def sync(device: str) -> None:
    # CUDA runs asynchronously: a timer must wait for the queued work.
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_teacher(size: str, device: str, dtype: str, tokenizer: str | None = None) -> LocalTeacher:
    """A teacher with random weights of `size`'s shape, built straight on the device
    (no hub access, and no save and reload of many GB), with SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from promptdistill.models import BUILTIN_SMOLLM2, LoadedModel, load_tokenizer

    tok = load_tokenizer(tokenizer or BUILTIN_SMOLLM2)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.02, **SIZES[size])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    return LocalTeacher(LoadedModel(model=model, tokenizer=tok, name=f"random-{size}", device=device))


def repeat_prompt(cfg, k: int) -> None:
    """Repeat the prompt's rules (all before "Text to classify:") `k` times in place."""
    if k > 1:
        head, sep, tail = cfg.task.user_template.partition("Text to classify:")
        cfg.task.user_template = head * k + sep + tail


@torch.inference_mode()
def plain_generate(examples, cfg, teacher: LocalTeacher, batch_size: int = 64):
    """The plain baseline: full prompts, left-padded, `model.generate` in batches,
    greedy; returns (seconds, reply by id). No prefix reuse, no engine of ours."""
    task, tok, model = Task(cfg.task), teacher.tokenizer, teacher.loaded.model
    eot = end_of_turn_ids(tok)
    prompts = [render_prompt(tok, task.teacher_messages(e.text), cfg.task.reply_prefix) for e in examples]
    device = str(next(model.parameters()).device)
    replies = {}
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.task.max_new_tokens, do_sample=False,
                             top_p=None, top_k=None, temperature=None, eos_token_id=sorted(eot), pad_token_id=tok.pad_token_id)
        for e, row in zip(examples[start : start + batch_size], out[:, width:].tolist()):
            cut = next((i for i, t in enumerate(row) if t in eot), len(row))
            replies[e.id] = decode_reply(tok, task, row[:cut], eot)
    sync(device)
    return time.perf_counter() - t0, replies


@torch.inference_mode()
def batch_generate(examples, cfg, teacher: LocalTeacher):
    """transformers' continuous batching over the full prompts, greedy: (seconds,
    reply by id), or (None, why) where it is absent or fails. One untimed call on
    two prompts first (kernels loaded); the timed call includes generate_batch's
    own per-call setup (its paged cache; on CUDA its graph warm-up), as one
    labeling call would pay it."""
    from transformers import GenerationConfig

    model = teacher.loaded.model
    if not hasattr(model, "generate_batch"):
        import transformers

        return None, f"unavailable (transformers {transformers.__version__} has no generate_batch)"
    tok, task = teacher.tokenizer, Task(cfg.task)
    eot = end_of_turn_ids(tok)
    prompts = [render_prompt(tok, task.teacher_messages(e.text), cfg.task.reply_prefix) for e in examples]
    max_new = cfg.task.max_new_tokens
    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, top_p=None, top_k=None, temperature=None,
                              eos_token_id=sorted(eot), pad_token_id=tok.pad_token_id)
    device = str(next(model.parameters()).device)
    kwargs = {"progress_bar": False}
    if not device.startswith("cuda"):
        # Off a GPU it sizes its cache from the machine's memory (minutes on a CPU):
        # size it for this workload instead (every prompt's pages, none shared).
        try:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig
        except ImportError:
            return None, "unavailable (this transformers has no ContinuousBatchingConfig to size its cache off a GPU)"
        page = 256
        blocks = sum(-(-(len(p) + max_new) // page) for p in prompts) + 4
        kwargs.update(continuous_batching_config=ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=4096,
                                                                          use_cuda_graph=False, use_async_batching=False),
                      warmup=False)
    attention = model.config._attn_implementation
    try:
        model.generate_batch(prompts[:2], generation_config=config, **kwargs)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate_batch(prompts, generation_config=config, **kwargs)
        sync(device)
        seconds = time.perf_counter() - t0
    except Exception as e:  # a release whose generate_batch takes other arguments, or cannot run this model here
        return None, f"failed ({type(e).__name__}: {str(e)[:200]})"
    finally:
        # it switches the model to paged attention for its run; the other columns need the model's own back
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)
    results = list(out.values())
    if len(results) != len(prompts) or any(r.error for r in results):
        return None, f"failed ({sum(bool(r.error) for r in results)} errors, {len(results)}/{len(prompts)} results)"
    replies = {}
    for e, r in zip(examples, results):
        row = list(r.generated_tokens)
        cut = next((i for i, t in enumerate(row) if t in eot), len(row))
        replies[e.id] = decode_reply(tok, task, row[:cut], eot)
    return seconds, replies


def other_strategy(teacher: LocalTeacher) -> str:
    """The prefix strategy auto does not pick on the teacher's device."""
    return "expand" if strategy_for("auto", teacher.loaded.device) == "cascade" else "cascade"


def timed_labels(examples, cfg, teacher, out: Path, mode: str, prefix_attention: str = "auto", **kwargs):
    """Label `examples` into a fresh `out`; return (seconds, records by id)."""
    device = "cpu"
    if isinstance(teacher, LocalTeacher):
        # same weights, no cache kept: each run pays for its prompt prefix
        teacher = LocalTeacher(teacher.loaded, prefix_attention=prefix_attention)
        device = str(teacher.loaded.device)
    sync(device)
    t0 = time.perf_counter()
    label_inputs(cfg, examples, teacher, out, mode=mode, force=True, progress=False, **kwargs)
    sync(device)
    seconds = time.perf_counter() - t0
    records = {}
    for path in (out, out.with_name(out.stem + ".rejects.jsonl")):
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                records[r["id"]] = r
    return seconds, records


def interleaved(examples, cfg, teacher, tmp: Path, mode: str, rounds: int, batch_size, plain_rounds: int = 0):
    """Every column's inputs/s measured over the same stretch of time.

    The naive loop labels the inputs in `rounds` slices; after each slice the
    fast path labels all of them, and after `plain_rounds` of the rounds
    (spread over the run; the first round when 0) the other prefix strategy,
    and in generate mode (with plain_rounds > 0) the plain baseline and
    generate_batch, do too. A shared machine speeds up and slows down over
    minutes, and this way all columns see the same stretch of it. Returns a
    dict: naive rate and records, fast rate and each fast run's records,
    the other strategy's, plain's and generate_batch's rates and runs, and
    the fast rate over the rounds where they ran (what their ratios compare).
    """
    naive_s, fast_s, naive, fast_runs = 0.0, 0.0, {}, []
    plain_s, paired_fast_s, plain_runs = 0.0, 0.0, []
    other_s, other_runs, batch_s, batch_runs, batch_note = 0.0, [], 0.0, [], None
    other = other_strategy(teacher) if isinstance(teacher, LocalTeacher) else None
    with_plain = {round(i * rounds / plain_rounds) for i in range(plain_rounds)} if plain_rounds else {0}
    for r in range(rounds):
        part = examples[r * len(examples) // rounds : (r + 1) * len(examples) // rounds]
        seconds, records = timed_labels(part, cfg, teacher, tmp / f"{mode}-naive-{r}.jsonl", mode, reuse_prefix=False, batch_size=1)
        naive_s += seconds
        naive.update(records)
        seconds, records = timed_labels(examples, cfg, teacher, tmp / f"{mode}-fast-{r}.jsonl", mode, batch_size=batch_size)
        fast_s += seconds
        fast_runs.append(records)
        if r in with_plain:
            paired_fast_s += seconds
            if other is not None:
                seconds, records = timed_labels(examples, cfg, teacher, tmp / f"{mode}-{other}-{r}.jsonl", mode, other,
                                                batch_size=batch_size)
                other_s += seconds
                other_runs.append(records)
            if plain_rounds and mode == "generate":
                seconds, replies = plain_generate(examples, cfg, teacher)
                plain_s += seconds
                plain_runs.append(replies)
                if batch_note is None:
                    seconds, replies = batch_generate(examples, cfg, teacher)
                    if seconds is None:
                        batch_note = replies
                    else:
                        batch_s += seconds
                        batch_runs.append(replies)
    n, paired = len(examples), len(with_plain)

    def rate(runs, seconds):
        return len(runs) * n / seconds if runs else None

    return {
        "naive_rate": n / naive_s, "naive": naive, "fast_rate": rounds * n / fast_s, "fast_runs": fast_runs,
        "plain_rate": rate(plain_runs, plain_s), "plain_runs": plain_runs, "paired_fast_rate": paired * n / paired_fast_s,
        "other": other, "other_rate": rate(other_runs, other_s), "other_runs": other_runs,
        "batch_rate": rate(batch_runs, batch_s), "batch_runs": batch_runs,
        "batch_note": batch_note if batch_note or batch_runs else None,
    }


def start_vllm(model: str):
    """vLLM's offline engine for the third column, or None (with a note) when vLLM is not installed."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm column: left out (vLLM is not installed; see the README, \"Labeling at scale\")")
        return None
    from promptdistill.teachers.vllm_engine import VllmTeacher

    t0 = time.perf_counter()
    options = {} if torch.cuda.is_available() else {"max_model_len": 2048, "enforce_eager": True}
    teacher = VllmTeacher(model, dtype="float32", options=options)
    print(f"vllm column: engine started in {time.perf_counter() - t0:.0f} s (not counted in its inputs/s), options {options}")
    return teacher


def agree(a: dict, b: dict) -> bool:
    """Same reply and label; choose-mode distributions within 1e-4 (vLLM's kernels sum in another order)."""
    if (a["teacher_reply"], a["label"]) != (b["teacher_reply"], b["label"]):
        return False
    if a["label_probs"] is None:
        return b["label_probs"] is None
    return all(abs(a["label_probs"][k] - b["label_probs"][k]) <= 1e-4 for k in b["label_probs"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="inputs to label")
    p.add_argument("--batch-size", type=int, help="inputs per batch for the fast path (default: the library's, 64)")
    p.add_argument("--rounds", type=int, default=4,
                   help="the naive loop runs in this many slices, each followed by a full fast run (see `interleaved`)")
    p.add_argument("--plain-rounds", type=int, default=2,
                   help="rounds after which the plain baseline labels all inputs (0: leave the plain column out)")
    p.add_argument("--modes", default="choose,generate", help="comma-separated answer modes to measure")
    p.add_argument("--task", default=str(ROOT / "examples/language_id/task.toml"))
    p.add_argument("--model", help="teacher model id or folder (default: the task's teacher)")
    p.add_argument("--random-weights", choices=sorted(SIZES), help="a random-weight teacher of this shape, built on the device")
    p.add_argument("--tokenizer", help="with --random-weights: a folder of SmolLM2's tokenizer files (default: the packaged model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompt-repeat", type=int, default=1, help="repeat the prompt's rules K times (a longer prompt)")
    args = p.parse_args()

    cfg = load_config(args.task)
    repeat_prompt(cfg, args.prompt_repeat)
    examples = subsample(read_inputs(cfg.resolve_path(cfg.data.inputs)), args.n, seed=0)
    if args.random_weights:
        teacher = random_teacher(args.random_weights, args.device, args.dtype, args.tokenizer)
    else:
        teacher = LocalTeacher.load(args.model or cfg.models.teacher, args.device, args.dtype)
    prompt_tokens = len(render_prompt(teacher.tokenizer, Task(cfg.task).teacher_messages(examples[0].text)))
    print(f"{len(examples)} inputs, teacher {teacher.name}, {args.device} {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"greedy, {prompt_tokens} prompt tokens for the first input (prompt x{args.prompt_repeat})")
    exact = args.dtype == "float32"  # random bfloat16 logits are nearly flat: answers may flip between batch shapes
    vllm_teacher = start_vllm(cfg.models.teacher) if not args.random_weights and args.device == "cpu" else None
    ok = True
    ratios, rates, table = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for mode in args.modes.split(","):
            got = interleaved(examples, cfg, teacher, tmp, mode, args.rounds, args.batch_size,
                              args.plain_rounds if mode == "generate" else 0)
            naive, fast_runs = got["naive"], got["fast_runs"]
            fast = fast_runs[0]
            equal = [(naive[i]["teacher_reply"], naive[i]["label"]) == (run[i]["teacher_reply"], run[i]["label"])
                     for run in fast_runs for i in naive]
            same = all(run.keys() == naive.keys() for run in fast_runs) and all(equal)
            parsed = sum(r["status"] == "ok" for r in fast.values())
            ok &= same or not exact
            ratios[mode] = got["fast_rate"] / got["naive_rate"]
            column = ""
            strategy = {"fast": strategy_for("auto", teacher.loaded.device) if isinstance(teacher, LocalTeacher) else None}
            if got["other_rate"] is not None:
                other_equal = [(run[i]["teacher_reply"], run[i]["label"]) == (naive[i]["teacher_reply"], naive[i]["label"])
                               for run in got["other_runs"] for i in naive]
                ok &= all(other_equal) or not exact
                rates.setdefault(mode, {}).update({strategy["fast"]: got["paired_fast_rate"], got["other"]: got["other_rate"]})
                column += (f" | {got['other']} {got['other_rate']:7.3f} inputs/s (fast = {strategy['fast']} in the same rounds "
                           f"{got['paired_fast_rate']:7.3f}), same answers {sum(other_equal)}/{len(other_equal)}")
            if got["plain_rate"] is not None:
                plain_equal = [run[i] == naive[i]["teacher_reply"] for run in got["plain_runs"] for i in naive]
                ok &= all(plain_equal) or not exact
                ratios["plain"] = got["paired_fast_rate"] / got["plain_rate"]
                rates.setdefault(mode, {}).update({"plain": got["plain_rate"], strategy["fast"]: got["paired_fast_rate"]})
                column += f" | plain {got['plain_rate']:7.3f} inputs/s, same replies {sum(plain_equal)}/{len(plain_equal)}"
            if got["batch_rate"] is not None:
                batch_equal = [run[i] == naive[i]["teacher_reply"] for run in got["batch_runs"] for i in naive]
                rates.setdefault(mode, {})["generate_batch"] = got["batch_rate"]
                column += f" | generate_batch {got['batch_rate']:7.3f} inputs/s, same replies as fast {sum(batch_equal)}/{len(batch_equal)}"
            elif got["batch_note"]:
                column += f" | generate_batch {got['batch_note']}"
            if vllm_teacher is not None:
                vllm_s, by_vllm = timed_labels(examples, cfg, vllm_teacher, tmp / f"{mode}-vllm.jsonl", mode)
                vllm_rate = len(examples) / vllm_s
                agrees = by_vllm.keys() == fast.keys() and all(agree(by_vllm[i], fast[i]) for i in fast)
                ok &= agrees
                column += f" | vllm {vllm_rate:7.3f} inputs/s, same answers: {agrees}"
            table[mode] = {"one-request": got["naive_rate"], "ours (auto)": got["fast_rate"], "auto is": strategy["fast"],
                           **rates.get(mode, {}), "generate_batch note": got["batch_note"]}
            print(f"{mode:8s} naive {got['naive_rate']:7.3f} inputs/s | fast {got['fast_rate']:7.3f} inputs/s | "
                  f"ratio {ratios[mode]:5.1f}x | identical labels: {same} ({sum(equal)}/{len(equal)}) | parsed {parsed}/{len(fast)}{column}",
                  flush=True)
    if not ok:
        print("ERROR: the fast path changed some answers", file=sys.stderr)
    for mode in ("choose", "generate"):
        if mode in ratios:
            print(f"{mode}-mode ratio (fast / naive): {ratios[mode]:.1f}")
    for name in ("cascade", "expand", "generate_batch"):
        if "plain" in rates.get("generate", {}) and name in rates["generate"]:
            print(f"generate-mode ratio ({name} / plain batched generate): {rates['generate'][name] / rates['generate']['plain']:.2f}")
    if "generate_batch" in rates.get("generate", {}):
        paired_fast = rates["generate"][strategy_for("auto", teacher.loaded.device)]
        print(f"generate-mode ratio (fast / generate_batch): {paired_fast / rates['generate']['generate_batch']:.2f}")
    # every column's inputs/s in one line (cascade, expand, plain, generate_batch: the
    # rounds where they ran), for gpu_check.py to read
    print("rates (inputs/s): " + json.dumps(table))
    if "plain" in ratios:
        print(f"generate-mode ratio (fast / plain batched generate): {ratios['plain']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
