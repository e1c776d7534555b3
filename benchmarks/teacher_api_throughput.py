"""Labels per second through a chat endpoint against the token-level backend, on one vLLM server.

The two HTTP teacher backends ask the same server for the same labels in
different ways:

  vllm-server  the prompt rendered here with the teacher's tokenizer and sent
               as token ids to `/v1/completions` (vLLM extensions: token ids
               back, `stop_token_ids`);
  chat         the conversation sent as messages to `/v1/chat/completions`
               through the `openai` client; the server applies its own chat
               template and answers text; no tokenizer here.

Both label the same inputs of the example data set (`examples/language_id`,
generate mode, greedy, `task.top_logprobs = 0`) at each concurrency of
`--concurrency` (default 1, 8, 32: requests in flight at once). The runs are
interleaved (per round, per concurrency, the two backends one after the
other, their order swapped every round), so a shared machine's changes of
speed hit both alike; a warm-up pass labels a few inputs through each first,
so the server's prefix cache holds the prompt before anything is timed. It
prints, per concurrency, labels per second for each backend and the ratio
chat / vllm-server, then how often the two gave the same greedy reply and
the prompt tokens per request each reported (the server's chat template
against the rendering here).

The server is started here as the `vllm`-marked tests start theirs
(tests/vllm_server.py: vLLM's OpenAI-compatible server on the packaged
SmolLM2-135M-Instruct, float32, `enforce_eager`, prefix caching), or given
with `--url` (then `--model` is the name it serves). It needs vLLM:

    make test-vllm        # builds .venv-vllm
    .venv-vllm/bin/python benchmarks/teacher_api_throughput.py [--n 32] [--rounds 2] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from promptdistill.config import load_config  # noqa: E402
from promptdistill.labeling import label_inputs  # noqa: E402
from promptdistill.records import read_inputs  # noqa: E402
from promptdistill.split import subsample  # noqa: E402
from promptdistill.teachers.chat import ChatTeacher  # noqa: E402
from promptdistill.teachers.server import ServerTeacher  # noqa: E402

BACKENDS = ("vllm-server", "chat")
MODEL = "smollm2-135m-instruct"


@contextlib.contextmanager
def vllm_server(log: Path):
    """vLLM's OpenAI-compatible server on the packaged model, as the vllm-marked tests start it."""
    from vllm_server import serve_vllm

    from promptdistill.models import model_path

    # A small KV cache: the 135M model needs far less than vLLM's CPU default.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    args = ["--served-model-name", MODEL, "--max-model-len", "2048", "--enable-prefix-caching"]
    with serve_vllm(model_path(MODEL), args, log) as url:
        yield url


def make_teacher(backend: str, url: str, model: str, concurrency: int):
    if backend == "chat":
        return ChatTeacher(url, model, concurrency=concurrency)
    return ServerTeacher(url, model, concurrency=concurrency)


def label(cfg, examples, backend: str, url: str, model: str, concurrency: int, out: Path) -> tuple[float, list[dict]]:
    """Seconds to label `examples`, and the records (labels and rejects)."""
    teacher = make_teacher(backend, url, model, concurrency)
    t0 = time.perf_counter()
    label_inputs(cfg, examples, teacher, out, mode="generate", progress=False)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for path in (out, out.with_name(out.stem + ".rejects.jsonl")) if path.exists()
               for line in path.read_text(encoding="utf-8").splitlines()]
    return seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="inputs labeled per backend, concurrency and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated requests in flight")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--url", help="a running vLLM server's /v1 URL (default: start one here)")
    parser.add_argument("--model", default=MODEL, help="the model name the server serves (its tokenizer must load here)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    cfg = load_config(ROOT / "examples/language_id/task.toml")
    cfg = replace(cfg, task=replace(cfg.task, top_logprobs=0, temperature=0.0, max_new_tokens=args.max_new_tokens),
                  models=replace(cfg.models, teacher=args.model))
    examples = subsample(read_inputs(cfg.resolve_path(cfg.data.inputs)), args.n, seed=0)

    with tempfile.TemporaryDirectory() as tmp, (contextlib.nullcontext(args.url) if args.url
                                                  else vllm_server(Path(tmp) / "vllm-serve.log")) as url:
        tmp = Path(tmp)
        for backend in BACKENDS:  # warm-up: the prompt into the server's prefix cache, the client's connections
            label(cfg, examples[:4], backend, url, args.model, 4, tmp / f"warm-{backend}.jsonl")
        seconds = {(b, c): [] for b in BACKENDS for c in levels}
        records: dict[str, dict[str, dict]] = {b: {} for b in BACKENDS}
        prompt_tokens = {b: [] for b in BACKENDS}
        for r in range(args.rounds):
            for c in levels:
                for backend in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
                    s, recs = label(cfg, examples, backend, url, args.model, c, tmp / f"{backend}-{c}-{r}.jsonl")
                    seconds[backend, c].append(s)
                    records[backend].update({x["id"]: x for x in recs})
                    prompt_tokens[backend] += [x["meta"]["teacher_usage"]["prompt_tokens"] for x in recs
                                               if (x.get("meta") or {}).get("teacher_usage")]
                    print(f"  round {r + 1} concurrency {c:>2} {backend:<11} {len(examples) / s:6.2f} labels/s ({s:.1f} s)", flush=True)

    print(f"\n{len(examples)} inputs x {args.rounds} rounds, model {args.model}, greedy, max_new_tokens {args.max_new_tokens}, "
          f"generate mode, one vLLM server at {'--url' if args.url else 'this machine'}")
    print(f"{'concurrency':>11} | {'vllm-server labels/s':>20} | {'chat labels/s':>13} | chat / vllm-server")
    for c in levels:
        rate = {b: len(examples) * len(seconds[b, c]) / sum(seconds[b, c]) for b in BACKENDS}
        print(f"{c:>11} | {rate['vllm-server']:>20.2f} | {rate['chat']:>13.2f} | {rate['chat'] / rate['vllm-server']:.2f}x")
    ids = sorted(records["chat"])
    same_reply = sum(records["chat"][i]["teacher_reply"].strip() == records["vllm-server"][i]["teacher_reply"].strip() for i in ids)
    parsed = {b: sum(x.get("label") is not None for x in records[b].values()) for b in BACKENDS}
    print(f"same greedy reply from both backends: {same_reply}/{len(ids)}; replies that parse: "
          + ", ".join(f"{b} {parsed[b]}/{len(records[b])}" for b in BACKENDS))
    print("prompt tokens per request (the server's usage): "
          + ", ".join(f"{b} {statistics.mean(prompt_tokens[b]):.0f}" if prompt_tokens[b] else f"{b} not reported" for b in BACKENDS))


if __name__ == "__main__":
    main()
