"""What the runtime runs: ``spec`` (EngineSpec, each engine's I/O contract), ``engine``
(the Engine interface and ``open_engine``), the backends (``ort_backend``, ``torch_backend``,
``tensorrt_backend``), ``build`` (``hallo2rt build``), ``manifest`` (cache keys and staleness),
``session`` (the engines of one run), ``doctor`` and ``bank`` (the ReferenceNet/denoiser
contract)."""
