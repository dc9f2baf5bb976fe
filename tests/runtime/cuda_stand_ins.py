"""CUDA-free stand-ins of torch.cuda's stream API, for testing stream handling on the CPU:
``install(monkeypatch, name)`` replaces ``torch.cuda.Stream`` / ``torch.cuda.stream`` /
``torch.cuda.current_stream`` and returns the one-item list naming the current stream."""

from __future__ import annotations

import torch


class Stream:
    def __init__(self, device=None, name: str = "side"):
        self.name = name

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


def install(monkeypatch, new_stream_name: str = "side") -> list[str]:
    """Current stream starts as "main"; every new Stream is called ``new_stream_name``."""
    current = ["main"]
    main = Stream(name="main")

    class StreamContext:
        def __init__(self, stream: Stream):
            self.stream = stream

        def __enter__(self):
            self.prev, current[0] = current[0], self.stream.name

        def __exit__(self, *exc):
            current[0] = self.prev

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream(device, new_stream_name))
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    return current
