"""``Client``: the server's API from Python (``hallo2rt submit`` uses it).

from hallo2rt.serve import Client
c = Client("http://127.0.0.1:8000", token=None)
job = c.submit("face.jpg", "speech.wav", face_box="180,78,262,182", steps=20)
c.wait(job, progress=print)
c.download(job, "out.mp4")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..engines.errors import Hallo2rtError

FINAL = ("done", "failed", "cancelled")


class ServerError(Hallo2rtError, RuntimeError):
    """The server refused a request or a job failed; the message is the server's."""


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _check(self, response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServerError(f"the server answered {response.status_code}: {message}")
        return response

    def submit(
        self,
        image: str | Path,
        audio: str | Path,
        face_embedding: str | Path | None = None,
        **options: Any,
    ) -> str:
        """Queue a job; options are generate's, with underscores (face_box, steps, cfg, ...).
        Returns the job id."""
        paths = {"image": image, "audio": audio}
        if face_embedding is not None:
            paths["face_embedding"] = face_embedding
        handles = {k: open(p, "rb") for k, p in paths.items()}  # noqa: SIM115 - closed below
        try:
            files = {k: (Path(paths[k]).name, f) for k, f in handles.items()}
            data = {k: str(v) for k, v in options.items() if v is not None}
            r = self.http.post(
                f"{self.url}/v1/videos", files=files, data=data, timeout=self.timeout
            )
        finally:
            for f in handles.values():
                f.close()
        return self._check(r).json()["id"]

    def status(self, job: str) -> dict[str, Any]:
        r = self.http.get(f"{self.url}/v1/videos/{job}", timeout=self.timeout)
        return self._check(r).json()

    def events(self, job: str) -> Iterator[dict[str, Any]]:
        """The job's states as the server sends them (server-sent events), until it ends."""
        with self.http.get(f"{self.url}/v1/videos/{job}/events", stream=True, timeout=None) as r:
            self._check(r)
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])

    def wait(self, job: str, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Follow the job to its end; raise ``ServerError`` if it failed or was cancelled."""
        state = self.status(job)
        if state["state"] not in FINAL:
            for state in self.events(job):
                if progress:
                    progress(state)
            state = self.status(job)
        if state["state"] != "done":
            raise ServerError(f"job {job} {state['state']}: {state.get('error')}")
        return state

    def download(self, job: str, out: str | Path) -> Path:
        """The finished video to ``out``, written under a temporary name and renamed."""
        out = Path(out)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            with self.http.get(
                f"{self.url}/v1/videos/{job}/result", stream=True, timeout=None
            ) as r:
                self._check(r)
                with tmp.open("wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    def cancel(self, job: str) -> dict[str, Any]:
        r = self.http.delete(f"{self.url}/v1/videos/{job}", timeout=self.timeout)
        return self._check(r).json()
