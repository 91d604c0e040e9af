"""Hub servers on loopback for the Hub tests: a real download server and an upload recorder.

- :class:`OlahServer` runs ``olah`` (a Hugging Face Hub-compatible mirror) as a subprocess in
  offline mode, serving git repositories under ``<root>/mirrors/models/<org>/<repo>``; the real
  ``huggingface_hub`` client downloads from it through ``HF_ENDPOINT``.
- :class:`UploadRecorder` is a small ``http.server`` in a thread that speaks just enough of the
  Hub's upload API for ``HfApi.create_repo`` + ``upload_folder`` (create repo, preupload, the
  git-LFS batch API with a basic PUT transfer, the NDJSON commit) and records what the client sent.
  No reachable server accepts uploads, so this is how the upload path is tested.
- :func:`git_repo_from_folder` commits a ``save_pretrained`` folder into such a git repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

GIT_ENV = {
    "GIT_AUTHOR_NAME": "tokenkit tests",
    "GIT_AUTHOR_EMAIL": "tests@tokenkit.invalid",
    "GIT_COMMITTER_NAME": "tokenkit tests",
    "GIT_COMMITTER_EMAIL": "tests@tokenkit.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def git_repo_from_folder(repo: Path, folder: Path, message: str, tag: str | None = None) -> str:
    """Commit the files of ``folder`` into the git working tree ``repo`` (created if needed).

    Returns the commit id; ``tag`` also tags that commit.
    """
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for f in folder.iterdir():
        shutil.copyfile(f, repo / f.name)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    if tag:
        _git(repo, "tag", tag)
    return _git(repo, "rev-parse", "HEAD")


class OlahServer:
    """``olah`` serving local git repositories (offline mode) on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def start(self, timeout: float = 60.0) -> OlahServer:
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'mirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f'repos-path = "{self.root / "cache"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\n"
            "offline = true\n"
        )
        self.log = open(self.root / "olah.out", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from olah.server import cli; cli()", "-c", str(config),
             "--log-path", str(self.root / "logs")],
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited early:\n{(self.root / 'olah.out').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/models/none/none/revision/main", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # it answered (404/401 for an unknown repo)
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.endpoint} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


class UploadRecorder:
    """A minimal Hub upload API on loopback that records every request and the committed files."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[dict[str, Any]] = []
        self.validated: list[Any] = []  # card metadata sent to /api/validate-yaml
        self.files: dict[str, dict[str, bytes]] = {}  # repo_id -> path -> content
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                recorder._handle(self, "POST")

            def do_PUT(self) -> None:
                recorder._handle(self, "PUT")

            def do_GET(self) -> None:
                recorder._handle(self, "GET")

            def do_HEAD(self) -> None:
                recorder._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> UploadRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # -- the API ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        path = h.path.split("?")[0]
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            self.created.append(payload)
            self.files.setdefault(repo_id, {})
            return self._json(h, 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(h, json.loads(body))
        if method == "POST" and parts[:2] == ["api", "models"] and parts[-2] == "preupload":
            payload = json.loads(body)
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                    "shouldIgnore": False,
                }
                for f in payload["files"]
            ]
            return self._json(h, 200, {"files": files})
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            payload = json.loads(body)
            objects = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "authenticated": True,
                    "actions": {"upload": {"href": f"{self.endpoint}/lfs-upload/{o['oid']}", "header": {}}},
                }
                for o in payload["objects"]
            ]
            return self._json(h, 200, {"transfer": "basic", "objects": objects})
        if method == "PUT" and parts[0] == "lfs-upload":
            if hashlib.sha256(body).hexdigest() != parts[1]:
                return self._json(h, 400, {"error": "sha256 does not match the oid"})
            self.lfs_objects[parts[1]] = body
            return self._json(h, 200, {})
        if method == "POST" and parts[:2] == ["api", "models"] and parts[-2] == "commit":
            return self._commit(h, "/".join(parts[2:-2]), parts[-1], body)
        return self._json(h, 404, {"error": f"{method} {path} is not part of this test server"})

    def _commit(self, h: BaseHTTPRequestHandler, repo_id: str, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        repo = self.files.setdefault(repo_id, {})
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                repo[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return self._json(h, 400, {"error": f"LFS object {value['oid']} was never uploaded"})
                repo[value["path"]] = self.lfs_objects[value["oid"]]
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": revision, "header": header, "lines": lines})
        return self._json(
            h,
            200,
            {
                "commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
        )

    def _validate_yaml(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        """The checks the Hub makes on a card's metadata that a tokenizer card could fail."""
        errors = []
        content = payload["content"].replace("\r\n", "\n")
        if not content.startswith("---\n") or "\n---\n" not in content[3:]:
            return self._json(h, 400, {"errors": [{"message": "README.md has no YAML metadata block"}]})
        try:
            meta = yaml.safe_load(content[4:].split("\n---\n", 1)[0]) or {}
        except yaml.YAMLError as exc:
            return self._json(h, 400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
        if not isinstance(meta, dict):
            errors.append({"message": "metadata must be a mapping"})
        else:
            for key in ("tags", "datasets"):
                value = meta.get(key, [])
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    errors.append({"message": f'"{key}" must be a list of strings'})
            for key in ("library_name", "license"):
                if key in meta and not isinstance(meta[key], str):
                    errors.append({"message": f'"{key}" must be a string'})
        self.validated.append(meta)
        return self._json(h, 400 if errors else 200, {"errors": errors, "warnings": []})

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def populate_cache(
    hub_cache: Path, repo_id: str, revision: str, folder: Path, commit: str = "c" * 40
) -> Path:
    """Put ``folder``'s files into a Hugging Face cache by hand, as ``repo_id`` at ``revision``.

    The layout ``huggingface_hub`` reads offline: ``refs/<revision>`` holds a commit id and
    ``snapshots/<commit>/`` the files (plain files; no blobs or symlinks needed).
    """
    repo_dir = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    for f in folder.iterdir():
        shutil.copyfile(f, snapshot / f.name)
    return snapshot


def run_client(
    job: dict[str, Any], env: dict[str, str], root: Path, timeout: float = 120.0
) -> dict[str, Any]:
    """Run :func:`client` in a fresh interpreter (so HF_* variables apply before any import)."""
    job_path = root / f"job-{len(list(root.glob('job-*.json')))}.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(
        [sys.executable, __file__, str(job_path)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return json.loads(Path(job["result"]).read_text())


def client(job_path: str) -> None:
    """The client side of the Hub tests, run in a subprocess.

    The job lists ``loads`` ({"key", "spec", "kwargs"}): each is ``tokenkit.load(spec, **kwargs)``;
    its encoder latents, tokens and decoded output on the job's input go to ``job["outputs"]``
    (safetensors), errors to the JSON result; ``pushes`` and ``cli`` run push_to_hub and the CLI.
    """
    import torch
    from safetensors.torch import load_file, save_file

    import tokenkit
    from tokenkit import hub

    job = json.loads(Path(job_path).read_text())
    if job.get("no_retry_wait"):
        # huggingface_hub retries a refused connection 5 times with backoff (about 25 s) before it
        # gives up; keep the retries, skip the waiting
        import time
        import types

        import huggingface_hub.utils._http as hf_http

        clock = {n: getattr(time, n) for n in dir(time) if not n.startswith("_")}
        hf_http.time = types.SimpleNamespace(**{**clock, "sleep": lambda seconds: None})
    for name, entry in job.get("register", {}).items():
        hub.register_pretrained(name, entry)
    torch.set_num_threads(1)  # the same reduction order as the reference outputs (bitwise comparison)
    x = load_file(job["input"])["x"] if job.get("input") else None
    result: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for item in job.get("loads", []):
        try:
            tok = tokenkit.load(item["spec"], **item.get("kwargs", {}))
            with torch.no_grad():
                tensors[f"{item['key']}.z"] = tok.encode_latents(x, None).z.contiguous()
                tokens = tok.encode(x)
                tensors[f"{item['key']}.tokens"] = tokens.contiguous()
                tensors[f"{item['key']}.decoded"] = tok.decode(tokens).contiguous()
            result[item["key"]] = {"ok": True, "architecture": tok.architecture}
        except Exception as exc:
            result[item["key"]] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    for item in job.get("pushes", []):
        tok = tokenkit.load(item["folder"])
        result[item["key"]] = tok.push_to_hub(item["repo_id"], **item.get("kwargs", {}))
    for item in job.get("cli", []):
        result[item["key"]] = getattr(hub, item["function"])(item["argv"])
    if tensors:
        save_file(tensors, job["outputs"])
    Path(job["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    client(sys.argv[1])
