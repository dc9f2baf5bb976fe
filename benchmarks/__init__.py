"""Benchmarks: ``bench`` (hallo2rt bench), ``baseline`` (the official-style clip loop) and
``memory`` (peak RSS against audio length). See benchmarks/README.md."""
