"""The generation runtime: audio, portrait, sampler, clip loop and streamed video.

It talks to models only through ``hallo2rt.runtime.session.Session`` (engines by name, fed by
spec) and never imports ``hallo2rt.export`` (docs/architecture.md dependency direction). The same
code runs built engines of any backend (``Session.open``) and the PyTorch wrappers straight from the
checkpoints (``hallo2rt.assemble.load_torch_session``).
"""
