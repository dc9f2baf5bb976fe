"""What the runtime runs: ``spec`` (EngineSpec, each engine's I/O contract), ``models`` (the
callables a generation needs), ``bank`` (the ReferenceNet/denoiser contract) and
``torch_models`` (the PyTorch backend). The TensorRT and ONNX Runtime backends and the engine
cache are not built yet."""
