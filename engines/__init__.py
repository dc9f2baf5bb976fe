"""Engine interface and backends (TensorRT, ONNX Runtime, PyTorch). Not built yet: see issue
"Engines: TensorRT, ONNX Runtime and PyTorch backends"."""
