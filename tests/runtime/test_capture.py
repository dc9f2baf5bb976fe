"""What the CUDA-graph step loop relies on, checked on the CPU: the code one step runs has
nothing a capture cannot record, every address it hands the engine is 256-byte aligned and
fixed, and the loop (with its graph) is made once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hallo2rt.assemble import session_from_pretrained
from hallo2rt.demo import ASSETS
from hallo2rt.engines.bank import LOOP_INPUTS
from hallo2rt.engines.spec import random_feed
from hallo2rt.export.graphs import GraphShapes
from hallo2rt.runtime.capture import capture_hazards
from hallo2rt.runtime.pipeline import RunConfig, generate
from hallo2rt.runtime.portrait import build_portrait, load_image
from hallo2rt.runtime.sampler import ddim_schedule
from hallo2rt.runtime.steploop import ALIGN, StepLoop, aligned_empty, step_loop

from .cuda_stand_ins import install


@pytest.fixture(scope="module")
def torch_session(tiny, tiny_onnx):
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    return session_from_pretrained(tiny, shapes)


def _conditioning(session):
    spec = session.spec("denoiser_step")
    feed = random_feed(spec, spec.sizes("opt"), seed=2)
    noise = feed.pop("latents")
    return {k: v for k, v in feed.items() if k not in LOOP_INPUTS}, noise


def test_the_probe_names_each_kind_of_capture_hazard():
    x = torch.randn(4)

    def bad():
        torch.tensor([0, 1, 0, 1])  # Python data -> tensor (a host-to-device copy on a GPU)
        _ = x.sum().item()  # the host waits for the device
        _ = bool((x > 0).any())
        _ = x.nonzero()  # data-dependent size

    found = capture_hazards(bad)
    assert any("torch.tensor() from host data" in h and "test_capture.py" in h for h in found)
    assert sum("_local_scalar_dense" in h for h in found) == 2  # .item() and bool()
    assert any("aten::nonzero" in h for h in found)
    assert capture_hazards(lambda: (torch.arange(4) + 4) % 2 * x) == []
    assert torch.tensor is not None and capture_hazards(lambda: torch.tensor(1.0)) != []


def test_one_denoiser_step_has_nothing_a_capture_cannot_record(torch_session):
    with torch_session:
        loop = StepLoop(torch_session, ddim_schedule(3), 3.5)
        const, noise = _conditioning(torch_session)
        loop._load(const, noise)
        with torch.inference_mode():
            assert capture_hazards(lambda: loop._step(0)) == []


def test_every_address_the_loop_feeds_is_aligned_and_the_same_every_clip(torch_session):
    engine = torch_session.engines["denoiser_step"]
    seen: list[dict[str, int]] = []
    real = engine.infer

    def spy(feed):
        seen.append({k: v.data_ptr() for k, v in feed.items()})
        return real(feed)

    with torch_session:
        engine.infer = spy
        try:
            loop = StepLoop(torch_session, ddim_schedule(3), 3.5)
            for seed in (2, 3):  # two clips
                const, noise = _conditioning(torch_session)
                loop(const, noise + seed)
        finally:
            del engine.infer
    assert len(seen) == 6 and set(seen[0]) == {t.name for t in engine.spec.inputs}
    misaligned = {k: p % ALIGN for call in seen for k, p in call.items() if p % ALIGN}
    assert misaligned == {}
    for i in range(3):  # step i of clip 2 reads exactly the addresses of step i of clip 1
        assert seen[i] == seen[i + 3]
    assert seen[0]["timestep"] != seen[1]["timestep"]  # one buffer per step, not a view


def test_aligned_empty_aligns_any_dtype_and_shape():
    for dtype, shape in ((torch.int64, (1,)), (torch.float16, (3, 5)), (torch.float32, ())):
        t = aligned_empty(shape, dtype, torch.device("cpu"))
        assert t.data_ptr() % ALIGN == 0 and t.shape == shape and t.dtype == dtype


def test_the_loop_is_made_once_per_open_session_and_cleared_at_exit(torch_session):
    rgb = load_image(ASSETS / "portrait.jpg")
    emb = np.random.default_rng(0).standard_normal(torch_session.embedding_dim)
    portrait = build_portrait(rgb, torch_session.size, (180, 78, 262, 182), emb)
    feats = torch.randn(4, 2, 32, generator=torch.Generator().manual_seed(3))
    cfg = RunConfig(steps=2, frames=4)
    made = []
    real = StepLoop.__init__

    def counting(self, *args, **kwargs):
        made.append(self)
        real(self, *args, **kwargs)

    StepLoop.__init__ = counting
    try:
        with torch_session:
            a = [c.frames for c in generate(torch_session, portrait, feats, cfg)]
            b = [c.frames for c in generate(torch_session, portrait, feats, cfg)]
            assert step_loop(torch_session, ddim_schedule(2), 3.5) is made[0]
        with torch_session:
            step_loop(torch_session, ddim_schedule(2), 3.5)
    finally:
        StepLoop.__init__ = real
    assert len(made) == 2  # one for both runs of the first session, one after reopening
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_failed_capture_restores_the_stream_stays_eager_and_is_never_retried(
    torch_session, monkeypatch
):
    """CUDA-free stand-ins of torch.cuda's stream and graph API: capture_end raises, as on an
    invalidated capture. The loop must fall back to per-step launches with the reason, give the
    same latents, leave the current stream as it was, and never capture on that device again."""
    from hallo2rt.runtime import steploop

    current = install(monkeypatch)
    events = []

    class Graph:
        def capture_begin(self, capture_error_mode="global"):
            events.append(("begin", capture_error_mode, current[0]))

        def capture_end(self):
            events.append(("end", current[0]))
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(steploop, "_FAILED_DEVICES", set())
    with torch_session:
        const, noise = _conditioning(torch_session)
        want = StepLoop(torch_session, ddim_schedule(3), 3.5, cuda_graph=False)(const, noise)
        loop = StepLoop(torch_session, ddim_schedule(3), 3.5)
        loop.mode = "cuda-graph"  # as on a GPU
        got = loop(const, noise)
        assert loop.mode.startswith("eager (CUDA graph capture failed: RuntimeError")
        assert events == [("begin", "thread_local", "side"), ("end", "side")]
        assert current[0] == "main"  # restored although capture_end raised
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert steploop._FAILED_DEVICES == {str(loop.device)}
        again = StepLoop(torch_session, ddim_schedule(3), 3.5)  # never retried in this process
        assert again.mode == "eager (a CUDA graph capture failed earlier in this process)"
