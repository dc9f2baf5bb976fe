"""The generation runtime: audio, portrait, sampler, clip loop and streamed video.

It talks to models only through ``hallo2rt.engines.models.Models`` and never imports
``hallo2rt.export`` (DESIGN.md dependency direction). Today the PyTorch modules provide the
``Models``; compiled engines (TensorRT / ONNX Runtime) and CUDA graphs are later milestones.
"""
