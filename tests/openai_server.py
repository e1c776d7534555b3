"""A small OpenAI-compatible server over a transformers model, for the teacher contract tests.

The server backend (promptdistill/teachers/server.py) is tested against a
real HTTP server in another process, not a mock of its client: this one
serves a tiny model from tests/conftest.py with the standard library's
http.server, speaking the subset of vLLM's API the backend uses:

- `GET /v1/models`;
- `POST /v1/completions` with token-id prompts (one list of ids, or a list
  of them: one choice each), `max_tokens`, `temperature` (0 = greedy),
  `seed`, `stop_token_ids` (the stop token is kept in `token_ids`, as vLLM
  does), `allowed_token_ids`, `logprobs` (k: the top-k of the raw
  distribution, before the allowed-token mask, plus the chosen token, as
  vLLM's default `raw_logprobs` mode reports), `return_tokens_as_token_ids`
  and `return_token_ids`.

Greedy answers are computed in float32 with one plain forward per token, so
they equal the local backend's; samples use torch's generator seeded with
`seed` (not the local backend's draws, as with vLLM). Requests are answered
one at a time (a lock around the model), whatever the client's concurrency.

Run: `python tests/openai_server.py MODEL_DIR --name NAME`; it prints
`PORT <n>` once it listens. `serve(model_dir, name)` is the fixture's context manager.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import stop_process_group


def completion_choice(model, tokenizer, prompt: list[int], body: dict, index: int) -> dict:
    """One choice of a /completions answer for a token-id prompt."""
    import torch

    k = body.get("logprobs")
    stop = set(body.get("stop_token_ids") or []) | {tokenizer.eos_token_id}
    allowed = body.get("allowed_token_ids")
    temperature = float(body.get("temperature") or 0.0)
    generator = torch.Generator().manual_seed(int(body.get("seed") or 0))
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    ids, generated, chosen_logps, tops = list(prompt), [], [], []
    finish = "length"
    with torch.inference_mode():
        for _ in range(int(body.get("max_tokens") or 16)):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            raw = torch.log_softmax(logits, dim=-1)
            if allowed:
                masked = torch.full_like(logits, float("-inf"))
                masked[allowed] = logits[allowed]
                logits = masked
            if temperature > 0:
                token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
            else:
                token = int(logits.argmax())
            generated.append(token)
            ids.append(token)
            chosen_logps.append(float(raw[token]))
            if k is not None:
                best = raw.topk(k).indices.tolist() if k else []
                tops.append({_token_text(tokenizer, t, as_ids): float(raw[t]) for t in best + [token]})
            if token in stop:
                finish = "stop"
                break
    choice = {"index": index, "text": tokenizer.decode(generated, skip_special_tokens=True), "finish_reason": finish,
              "logprobs": None}
    if k is not None:
        choice["logprobs"] = {"tokens": [_token_text(tokenizer, t, as_ids) for t in generated], "token_logprobs": chosen_logps,
                              "top_logprobs": tops, "text_offset": [0] * len(generated)}
    if body.get("return_token_ids"):
        choice["token_ids"] = generated
    return choice


def _token_text(tokenizer, token: int, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else tokenizer.convert_ids_to_tokens(token)


def make_server(model_dir: str, name: str, port: int = 0) -> ThreadingHTTPServer:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/v1/models":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            # vLLM reports how many tokens the model takes (prompt and reply together).
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model",
                                                         "max_model_len": model.config.max_position_embeddings}]})

        def do_POST(self):
            if self.path != "/v1/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("model") != name:
                return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            prompt = body.get("prompt")
            prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
            if not all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
                return self._send(400, {"error": {"message": "this test server takes token-id prompts only"}})
            with lock:
                choices = [completion_choice(model, tokenizer, p, body, i) for i, p in enumerate(prompts)]
            self._send(200, {"object": "text_completion", "model": name, "choices": choices})

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


@contextlib.contextmanager
def serve(model_dir: str, name: str, timeout: float = 300.0):
    """Start the server in a subprocess for `model_dir` under `name`; yield its /v1 URL; stop it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, __file__, model_dir, "--name", name], stdout=subprocess.PIPE,
                            stderr=log, env=env, start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            proc.kill()
            proc.wait()
            log.seek(0)
            raise RuntimeError(f"the test OpenAI server did not start: {line!r} {log.read().decode(errors='replace')[-2000:]}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        stop_process_group(proc, 30)
        proc.stdout.close()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--name", required=True, help="the model name the server serves")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = make_server(args.model_dir, args.name, args.port)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
