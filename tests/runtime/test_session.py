"""The Session's own CUDA stream, checked on the CPU against stand-ins of torch's stream API."""

from __future__ import annotations

import torch

from hallo2rt.runtime.session import Session

from .cuda_stand_ins import install


def test_engines_open_and_run_on_the_sessions_own_stream(monkeypatch):
    current = install(monkeypatch, "session stream")

    class FakeEngine:
        device = torch.device("cuda", 0)
        opened_on = None

        def open(self):
            self.opened_on = current[0]

        def close(self):
            pass

    engine = FakeEngine()
    session = Session({"audio_encoder": engine}, torch.device("cuda", 0), require=())
    with session:
        assert current[0] == "session stream" and session.stream is not None
    assert engine.opened_on == "session stream" and current[0] == "main"
