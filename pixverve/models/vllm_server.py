"""Start ``vllm serve MODEL`` inside the job that needs it, wait until it answers, stop it after.

For clusters without a standing VLM endpoint: the judge rule runs on a GPU node, starts the
server as a child process on 127.0.0.1, polls ``GET /v1/models`` until the model is listed, runs
its requests against it and stops it (SIGTERM, then SIGKILL) however the job ends.  The server's
output goes to a log file beside the rule's log.  If the server exits or is not ready in time
the job fails with the last lines of that log -- never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


class ServerFailed(RuntimeError):
    pass


# The `vllm` of the workflow's own env (envs/vllm.yaml; vLLM pins its own torch, so it is an env
# apart): rule vllm_path runs `command -v vllm` in that env and writes the path here (relative to
# the working directory), and every job that starts vLLM takes the file as an input.
VLLM_PATH_FILE = "results/envs/vllm.path"


def uses_vllm_env(config: dict) -> bool:
    """Whether some job starts vLLM from envs/vllm.yaml: a ``serve`` block anywhere in the config
    (``vlm.serve`` or a step's ``vlm:`` override) with ``enabled`` and ``vllm_env`` true and a
    command that starts with a bare ``vllm``."""

    def walk(node):
        if isinstance(node, dict):
            serve = node.get("serve")
            if isinstance(serve, dict) and serve.get("enabled") and _from_env(serve):
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(config)


def _from_env(serve: dict) -> bool:
    words = shlex.split(serve.get("command", "vllm serve"))
    return bool(serve.get("vllm_env", True)) and bool(words) and words[0] == "vllm"


def serve_command(serve: dict, model: str, port: int) -> list[str]:
    """The argv: ``<command> <model> --host 127.0.0.1 --port <port> <extra args>``; a bare ``vllm``
    is the env's (``VLLM_PATH_FILE``) unless ``vllm_env: false`` (then it is found on PATH)."""
    words = shlex.split(serve.get("command", "vllm serve"))
    if _from_env(serve):
        path = Path(VLLM_PATH_FILE)
        if not path.is_file() or not path.read_text().strip():
            raise ServerFailed(
                f"{VLLM_PATH_FILE} (rule vllm_path: the `vllm` of envs/vllm.yaml) is missing or empty; "
                "it is an input of every job with vlm.serve.enabled -- or set vlm.serve.vllm_env: false "
                "to run `vllm` from PATH (a site module)"
            )
        words[0] = path.read_text().strip()
    return [*words, model, "--host", "127.0.0.1", "--port", str(port), *map(str, serve.get("args") or [])]


def _listed_models(base_url: str, headers: dict) -> list[str]:
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 (our own 127.0.0.1 URL)
        return [m.get("id") for m in json.load(reply).get("data", [])]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def free_port() -> int:
    """A TCP port nobody listens on now (two judge jobs on one node must not collide)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(serve: dict, model: str, log_path: str | Path, api_key: str | None = None):
    """Run the server for the duration of the ``with`` block; yields its base URL."""
    port = int(serve.get("port", 0)) or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    timeout = float(serve.get("startup_timeout_s", 1800))
    served_name = serve.get("served_model_name") or model
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = serve_command(serve, model, port)
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # vLLM reads the key from here: it never appears in argv or logs
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            raise ServerFailed(f"config key vlm.serve.command: cannot start {argv[0]!r}: {exc}") from exc
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise ServerFailed(
                        f"{' '.join(argv[:3])} exited with code {proc.returncode} before it was ready; last lines of {log_path}:\n{_tail(log_path)}"
                    )
                try:
                    if served_name in _listed_models(base_url, headers):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerFailed(
                        f"the VLM server did not list {served_name!r} at {base_url}/models within {timeout:g} s (vlm.serve.startup_timeout_s); last lines of {log_path}:\n{_tail(log_path)}"
                    )
                time.sleep(float(serve.get("poll_s", 5)))
            yield base_url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: vLLM forks engine workers
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
