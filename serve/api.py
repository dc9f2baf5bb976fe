"""The HTTP API (FastAPI): jobs in, progress and videos out. ``build_api(config, manager)``
returns the ASGI app; the Ray Serve ingress (``serve.app``) builds it on its replica, and tests
may call it directly. FastAPI is imported at module level: it resolves the handlers' annotations
(``Request``) in this module's namespace.

    POST   /v1/videos              multipart: files image, audio [, face_embedding]; form fields
                                   named like generate's options (face_box, steps, cfg, ...)
    GET    /v1/videos/{id}         state, clip and step, frames/s, ETA, error
    GET    /v1/videos/{id}/events  the same as server-sent events until the job ends
    GET    /v1/videos/{id}/result  the MP4 (range requests)
    DELETE /v1/videos/{id}         cancel (or delete a finished job's video)
    GET    /healthz                liveness and the queue
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from .jobs import FILES, FINAL, RequestError, ServeConfig
from .manager import JobManager, status_of

SSE_KEEPALIVE_S = 15.0


class Unauthorised(Exception):
    """A /v1 request without the server's bearer token (answered 401)."""

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


def build_api(config: ServeConfig, manager: Callable[[], JobManager], page: bool = False):
    """The FastAPI app. ``manager()`` returns the job manager (made by the replica once its
    event loop runs). ``page``: mount the web page at ``/`` (Gradio, ``serve.page``)."""
    app = FastAPI(
        title="hallo2rt",
        description="Audio-driven portrait animation (Hallo2) as a service.",
        version="1",
    )
    limit = int(config.max_upload_mb * 2**20)

    def refuse(exc: BaseException) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError) -> JSONResponse:
        return refuse(exc)  # a route's refusal (unknown job, no video yet) as {"error": ...}

    def authorised(request: Request) -> None:
        """Every /v1 route's dependency: the bearer token, when the server has one."""
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            raise Unauthorised()

    @app.exception_handler(Unauthorised)
    async def unauthorised(_request: Request, exc: Unauthorised) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])

    @app.get("/healthz")
    async def healthz():
        m = manager()
        return {"status": "ok", "active_jobs": m.active(), "max_queue": config.max_queue}

    @v1.post("/videos", status_code=202)
    async def submit(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > 3 * limit + 2**20:
            return refuse(
                RequestError(
                    f"the request is {int(length) / 2**20:.0f} MB; each file may be at most "
                    f"{config.max_upload_mb:g} MB",
                    413,
                )
            )
        try:
            form = await request.form(max_files=len(FILES), max_fields=64)
        except Exception as exc:  # not multipart, too many parts
            return refuse(RequestError(f"the body is not a usable multipart form: {exc}"))
        uploads = {k: v for k, v in form.multi_items() if hasattr(v, "read")}
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        unknown = sorted(set(uploads) - set(FILES))

        async def save(folder: Path) -> dict[str, Path]:
            if unknown:
                raise RequestError(f"unknown files {unknown}; the files are: {', '.join(FILES)}")
            saved = {}
            for name, upload in uploads.items():
                # the client's file name (its last part, printable), in a folder of the field's
                # name: messages then say "audio/speech.mp3", never this server's paths
                base = Path(upload.filename or "").name
                base = "".join(c for c in base if c.isprintable())[-100:].lstrip(".") or name
                (folder / name).mkdir()
                path = folder / name / base
                size = 0
                with path.open("wb") as f:
                    while chunk := await upload.read(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            raise RequestError(
                                f"{name} is larger than {config.max_upload_mb:g} MB, this "
                                "server's limit per file",
                                413,
                            )
                        f.write(chunk)
                if size == 0:
                    raise RequestError(f"{name} is empty")
                saved[name] = path
            return saved

        try:
            job = await manager().submit(save, fields)
        except Exception as exc:  # the intake's message, with its status
            return refuse(exc)
        finally:
            await form.close()
        return JSONResponse(job.public(), status_code=202)

    @v1.get("/videos/{job_id}")
    async def status(job_id: str):
        return manager().get(job_id).public()

    @v1.get("/videos/{job_id}/events")
    async def events(job_id: str, request: Request):
        m = manager()
        job = m.get(job_id)

        async def stream():
            last = None
            while True:
                now = json.dumps(job.public())
                if now != last:
                    yield f"data: {now}\n\n"
                    last = now
                else:
                    yield ": keep-alive\n\n"
                if job.state in FINAL or await request.is_disconnected():
                    return
                await m.wait_change(SSE_KEEPALIVE_S)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @v1.get("/videos/{job_id}/result")
    async def result(job_id: str):
        job = manager().get(job_id)
        if job.state != "done" or job.result is None or not job.result.is_file():
            raise RequestError(f"job {job_id} is {job.state}: the video is not there", 409)
        return FileResponse(job.result, media_type="video/mp4", filename=f"{job_id}.mp4")

    @v1.delete("/videos/{job_id}")
    async def cancel(job_id: str):
        return (await manager().cancel(job_id)).public()

    app.include_router(v1)
    if page:
        from .page import mount_page

        mount_page(app, config, manager)
    return app
