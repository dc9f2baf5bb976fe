"""The web page (Gradio), mounted at ``/ui`` on the API's server (``/`` redirects there): upload
or record a portrait and audio, choose options, watch progress, play and download the video.
Its jobs go through the same job manager, checks and queue as the API's.
"""

from __future__ import annotations

import hmac
import shutil
from collections.abc import Callable
from pathlib import Path

from .jobs import FINAL, ServeConfig
from .manager import JobManager

PATH = "/ui"


def _describe(state: dict) -> str:
    if state["state"] == "queued":
        return "Queued: waiting for a free generator."
    if state["state"] == "running":
        eta = f", about {state['eta_s']:.0f} s left" if state["eta_s"] is not None else ""
        return (
            f"Generating: clip {state['clip']} of {state['clips']}, step {state['step']} of "
            f"{state['steps']}, {state['fps']:.2f} frames/s{eta}."
        )
    if state["state"] == "done":
        return "Done."
    return f"{state['state'].capitalize()}: {state['error']}"


def build_page(config: ServeConfig, manager: Callable[[], JobManager]):
    import gradio as gr

    from ..runtime.sampler import PRESETS
    from .manager import status_of

    async def run(image, audio, embedding, face_box, preset, steps, cfg, seed, *sr):
        if not image or not audio:
            yield "Give a portrait and an audio clip.", None
            return
        fields = {"preset": preset, "cfg": str(cfg), "seed": str(int(seed))}
        if sr:  # a server started with --upscale: the upscale and fidelity controls
            fields["upscale"], fields["fidelity"] = str(sr[0]), str(sr[1])
        if face_box:
            fields["face_box"] = face_box
        if steps:
            fields["steps"] = str(int(steps))

        async def save(folder: Path) -> dict[str, Path]:
            out = {}
            for name, src in (("image", image), ("audio", audio), ("face_embedding", embedding)):
                if src:
                    (folder / name).mkdir()
                    dst = folder / name / Path(src).name
                    shutil.copyfile(src, dst)
                    out[name] = dst
            return out

        m = manager()
        try:
            job = await m.submit(save, fields)
        except Exception as exc:  # the same message as the API's (and the command line's)
            yield f"Refused ({status_of(exc)}): {exc}", None
            return
        yield f"Job {job.id}: " + _describe(job.public()), None
        while job.state not in FINAL:
            await m.wait_change(1.0)
            yield f"Job {job.id}: " + _describe(job.public()), None
        video = str(job.result) if job.state == "done" and job.result else None
        yield f"Job {job.id}: " + _describe(job.public()), video

    with gr.Blocks(title="hallo2rt") as page:
        gr.Markdown("# hallo2rt\nAnimate a portrait from driving audio.")
        with gr.Row():
            image = gr.Image(
                label="Portrait", type="filepath", sources=["upload", "webcam"], elem_id="image"
            )
            audio = gr.Audio(
                label="Driving audio",
                type="filepath",
                sources=["upload", "microphone"],
                elem_id="audio",
            )
        with gr.Row():
            embedding = gr.File(
                label="Face embedding .npy (optional: found from the portrait)",
                file_types=[".npy"],
                type="filepath",
                elem_id="face_embedding",
            )
            face_box = gr.Textbox(
                label="Face box x0,y0,x1,y1 (empty: detected)", elem_id="face_box"
            )
            preset = gr.Dropdown(list(PRESETS), value="faithful", label="Preset", elem_id="preset")
            steps = gr.Number(
                label="Steps (0: the preset's)", value=0, precision=0, elem_id="steps"
            )
            cfg = gr.Number(label="Guidance scale", value=3.5)
            seed = gr.Number(label="Seed", value=42, precision=0)
        extra = []
        if config.upscale:
            with gr.Row():
                upscale = gr.Dropdown(
                    [1, 2, 4], value=1, label="Upscale (face restoration)", elem_id="upscale"
                )
                fidelity = gr.Slider(
                    0, 1, value=0.5, step=0.05, label="Fidelity (0: quality, 1: the input face)"
                )
            extra = [upscale, fidelity]
        submit = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        video = gr.Video(label="Video", elem_id="video")
        inputs = [image, audio, embedding, face_box, preset, steps, cfg, seed, *extra]
        submit.click(run, inputs, [status, video])
    return page


def mount_page(app, config: ServeConfig, manager: Callable[[], JobManager]) -> None:
    import gradio as gr
    from fastapi.responses import RedirectResponse

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(PATH + "/")

    auth = None
    if config.token is not None:
        token = config.token

        def auth(_user: str, password: str) -> bool:
            return hmac.compare_digest(password.encode(), token.encode())

    gr.mount_gradio_app(
        app,
        build_page(config, manager),
        path=PATH,
        auth=auth,
        allowed_paths=[str(config.results)],
    )
