"""hallo2rt: fast, trustworthy deployment of Hallo2 audio-driven portrait animation.

Subpackages: ``hallo2rt.export`` (checkpoints -> modules -> ONNX), ``hallo2rt.engines`` (one
Engine interface over TensorRT / ONNX Runtime / PyTorch), ``hallo2rt.runtime`` (the lean
generation runtime), ``hallo2rt.benchmarks``.
"""

__version__ = "0.1.0"
