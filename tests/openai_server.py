"""A small OpenAI-compatible server over a transformers model, for the teacher contract tests.

The server backend (promptdistill/teachers/server.py) is tested against a
real HTTP server in another process, not a mock of its client: this one
serves a tiny model from tests/conftest.py with the standard library's
http.server, speaking the subset of vLLM's API the backend uses:

- `GET /v1/models`;
- `POST /v1/completions` with token-id prompts (one list of ids, or a list
  of them: one choice each), `max_tokens`, `temperature` (0 = greedy),
  `seed`, `stop_token_ids` (the stop token is kept in `token_ids`, as vLLM
  does), `usage` (prompt and generated tokens, summed over the prompts), `allowed_token_ids`, `logprobs` (k: the top-k of the raw
  distribution, before the allowed-token mask, plus the chosen token, as
  vLLM's default `raw_logprobs` mode reports), `return_tokens_as_token_ids`
  and `return_token_ids`;
- `POST /v1/chat/completions` (the chat backend, teachers/chat.py): the
  messages rendered with the model's own chat template (as a chat server
  does), answered like a completion, with `usage` and, when asked,
  `logprobs.content` with `top_logprobs` as token text.

`ScriptedChatServer` is the chat API without a model, in a thread of the
test process: it answers `Final Answer: <input>` with usage and top
log-probabilities, and plays the faults a test scripts per input (429 with
Retry-After, 500, a reply cut short, not JSON, a JSON list, no choices, not
UTF-8, a hung request, a redirect).

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
            if self.path == "/v1/chat/completions":
                return self._chat(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
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
                choices = [completion_choice(model, tokenizer, p, {**body, "return_token_ids": True}, i) for i, p in enumerate(prompts)]
            # As vLLM counts: every prompt's tokens, every generated token (the stop token included).
            usage = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": sum(len(c["token_ids"]) for c in choices)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            for c in choices if not body.get("return_token_ids") else ():
                del c["token_ids"]
            self._send(200, {"object": "text_completion", "model": name, "choices": choices, "usage": usage})

        def _chat(self, body: dict):
            if body.get("model") != name:
                return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            prompt = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
            k = body.get("top_logprobs") if body.get("logprobs") else None
            request = {**body, "logprobs": k, "stop_token_ids": []}
            with lock:
                choice = completion_choice(model, tokenizer, list(prompt), {**request, "return_token_ids": True}, 0)
            ids = [t for t in choice["token_ids"] if t not in (tokenizer.eos_token_id,)]
            message = {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}
            out = {"index": 0, "message": message, "finish_reason": choice["finish_reason"], "logprobs": None}
            if k is not None:
                out["logprobs"] = {"content": [
                    {"token": tokenizer.decode([t]), "logprob": lp,
                     "top_logprobs": [{"token": tokenizer.convert_tokens_to_string([tok]), "logprob": v}
                                      for tok, v in sorted(top.items(), key=lambda kv: -kv[1])[:k]]}
                    for t, lp, top in zip(choice["token_ids"], choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"])]}
            usage = {"prompt_tokens": len(prompt), "completion_tokens": len(choice["token_ids"]),
                     "total_tokens": len(prompt) + len(choice["token_ids"])}
            self._send(200, {"object": "chat.completion", "model": name, "choices": [out], "usage": usage})

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


class ScriptedChatServer:
    """A chat-completions API in a thread, no model: each request's last user message is
    its input; it answers `Final Answer: <input>`, or `answer(input, request body)` (usage: the input's length in prompt
    tokens, 3 completion tokens, 2 cached; top_logprobs when asked: the answer token's
    alternatives are `alternatives`, or the input itself with log-prob -0.1).
    `script` lists per input the faults to play before answering: an HTTP status (429
    comes with Retry-After: `retry_after`), "truncated", "nonjson", "list", "nochoices",
    "notutf8", "nologprobs" (an answer without logprobs), "reasoning" (reasoning_content beside the answer), "hang" (`hang` seconds, then
    nothing), "trickle" (the answer one blank at a time over `hang` seconds), "huge" (the answer behind 200 kB of blanks,
    no length declared), or ("redirect", url). `calls` holds (input, time, Authorization, body).
    """

    def __init__(self, script: dict | None = None, *, host: str = "127.0.0.1", alternatives: dict[str, float] | None = None,
                 retry_after: str = "1", hang: float = 30.0, always: str | None = None, served: str = "remote-teacher",
                 answer=None):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[tuple[str, float, str | None, dict]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _raw(self, status: int, data: bytes, headers=(), length: int | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) if length is None else length))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def do_GET(self):
                self._raw(200, json.dumps({"object": "list", "data": [{"id": served}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"] if "messages" in body else ""
                with owner.lock:
                    owner.calls.append((text, __import__("time").monotonic(), self.headers.get("Authorization"), body))
                    pending = owner.script.get(text)
                    fault = pending.pop(0) if pending else always
                if isinstance(fault, int):
                    headers = [("Retry-After", retry_after)] if fault == 429 else []
                    return self._raw(fault, json.dumps({"error": {"message": "scripted"}}).encode(), headers)
                if isinstance(fault, tuple) and fault[0] == "redirect":
                    return self._raw(307, b"{}", [("Location", fault[1])])
                if fault == "hang":
                    __import__("time").sleep(hang)
                    self.close_connection = True
                    return
                if fault in ("trickle", "huge"):
                    return self._slow_or_huge(fault, text)
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": served, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": answer(text, body) if answer else f"Final Answer: {text}"}, "finish_reason": "stop",
                    "logprobs": None}],
                    "usage": {"prompt_tokens": len(text), "completion_tokens": 3, "total_tokens": len(text) + 3,
                              "prompt_tokens_details": {"cached_tokens": 2}}}
                if fault == "reasoning":  # a reasoning model: its thinking in its own field, naming another answer
                    reply["choices"][0]["message"]["reasoning_content"] = "Is it Final Answer: zz? No."
                if body.get("logprobs") and fault != "nologprobs":
                    alts = alternatives or {" " + text: -0.1}
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in alts.items()]
                    reply["choices"][0]["logprobs"] = {"content": [
                        {"token": t, "logprob": -0.01, "bytes": None, "top_logprobs": [{"token": t, "logprob": -0.01, "bytes": None}]}
                        for t in ("Final", " Answer", ":")] + [{"token": " " + text, "logprob": -0.1, "bytes": None, "top_logprobs": top}]}
                data = json.dumps(reply).encode()
                if fault == "truncated":
                    self.close_connection = True
                    return self._raw(200, data[: len(data) // 2], length=len(data))
                if fault == "nonjson":
                    return self._raw(200, b"<html>gateway</html>")
                if fault == "list":
                    return self._raw(200, b"[1, 2]")
                if fault == "nochoices":
                    return self._raw(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                if fault == "notutf8":
                    return self._raw(200, b'{"choices": "\xff\xfe"}')
                self._raw(200, data)

            def _slow_or_huge(self, fault, text):
                """A valid answer behind leading blanks (valid JSON): trickled one byte per 0.2 s
                for `hang` seconds under a declared length, or 200 kB of them with no length declared."""
                import time

                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": served, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": f"Final Answer: {text}"}, "finish_reason": "stop"}]}).encode()
                blanks = int(hang / 0.2) if fault == "trickle" else 200_000
                self.close_connection = True
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    if fault == "trickle":
                        self.send_header("Content-Length", str(blanks + len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if fault == "huge":
                        self.wfile.write(b" " * blanks + data)
                        return
                    for _ in range(blanks):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                    self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def inputs(self) -> list[str]:
        return [c[0] for c in self.calls]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
