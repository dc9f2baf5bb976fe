"""The Session's own CUDA stream, checked on the CPU against stand-ins of torch's stream API."""

from __future__ import annotations

import torch

from hallo2rt.runtime.session import Session


def test_engines_open_and_run_on_the_sessions_own_stream(monkeypatch):
    current = ["default"]

    class FakeStream:
        def __init__(self, device):
            self.name = "session stream"

        def synchronize(self):
            pass

    class FakeStreamContext:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            self.prev = current[0]
            current[0] = self.stream.name

        def __exit__(self, *exc):
            current[0] = self.prev

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", FakeStreamContext)

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
    assert engine.opened_on == "session stream" and current[0] == "default"
