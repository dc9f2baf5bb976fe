"""The Ray Serve application of ``hallo2rt serve``: a generator deployment and an HTTP ingress.

- ``Generator`` (``serve.worker``): each replica opens one ``Session`` once and takes one job at
  a time (``max_ongoing_requests=1``); it asks Ray for one GPU where the cluster has GPUs, one
  CPU otherwise, so replicas spread over the cluster's GPUs (``--replicas``).
  ``--max-replicas M`` lets Ray Serve add replicas while jobs wait, up to M (on a cluster with
  Ray's autoscaler, such as KubeRay, a replica that finds no free GPU makes it add a machine).
- ``Upscaler`` (``--upscale``, ``serve.worker``): replicas with the super-resolution engines;
  a generator hands them each SR window of a job that asks for ``upscale`` 2 or 4 and goes on
  denoising the next clip meanwhile (stage pipelining). A window carries the state the previous
  one handed on, so any Upscaler replica takes any window; on GPUs each replica asks for a GPU
  of its own, or a share of one when the cluster has fewer GPUs than replicas.
- ``Ingress``: the FastAPI app (``serve.api``) and the job manager (``serve.manager``); it
  streams each job from a free generator replica through a Ray Serve handle.

``run_server`` starts (or joins, ``--address``) a Ray cluster, binds Serve's HTTP proxy to
``--host``/``--port`` and deploys the application; Ray Serve's own metrics (requests, latencies,
replica health) are exported in Prometheus format by Ray's metrics agent.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .jobs import ServeConfig
from .worker import Generator, Upscaler

APP_NAME = "hallo2rt"
_MANAGERS: dict[str, Any] = {}  # the ingress replica's job manager (one per process)


def _current_manager():
    manager = _MANAGERS.get("ingress")
    if manager is None:
        raise RuntimeError("the ingress is still starting")
    return manager


def _asgi_factory(config: ServeConfig, page: bool):
    """A no-argument builder of the API: Ray Serve calls it on the ingress replica."""

    def build():
        from .api import build_api

        return build_api(config, _current_manager, page)

    return build


class _Ingress:
    def __init__(self, generator, config: ServeConfig):
        from .manager import JobManager

        streaming = generator.options(stream=True)
        _MANAGERS["ingress"] = JobManager(config, lambda spec: streaming.run.remote(spec))


def gpu_share(gpus: float, replicas: int) -> float:
    """Each replica's ``num_gpus``: a whole GPU when the cluster has one for every replica,
    else 1/k so that k replicas share each GPU (1/2, 1/3, ...: shares Ray can pack)."""
    if gpus >= replicas:
        return 1.0
    return 1.0 / math.ceil(replicas / max(1, math.floor(gpus)))


def generator_replicas(config: ServeConfig) -> dict[str, Any]:
    """The Generator deployment's replica options: ``--replicas`` of them, or with
    ``--max-replicas`` Ray Serve's autoscaling from ``--replicas`` up to that many while jobs
    wait (one job per replica as its target), and back down when they are idle."""
    if config.max_replicas is None or config.max_replicas == config.replicas:
        return {"num_replicas": config.replicas}
    return {
        "autoscaling_config": {
            "min_replicas": config.replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": 1,
        }
    }


def build_application(config: ServeConfig, gpus: float = 0, page: bool = True):
    """The application: ``Ingress.bind(Generator.bind(config[, Upscaler.bind(config)]),
    config)`` with its options; ``gpus``: how many GPUs the cluster has (0: CPU replicas)."""
    from ray import serve

    share = gpu_share(gpus, config.all_replicas) if gpus else 0.0
    actor = {"num_gpus": share} if gpus else {"num_cpus": 1}
    upscaler = None
    if config.upscale:
        upscaler = serve.deployment(
            name="Upscaler",
            num_replicas=config.sr_replicas,
            max_ongoing_requests=1,  # one window at a time per replica
            ray_actor_options=actor,
            graceful_shutdown_timeout_s=5,
        )(Upscaler).bind(config)
    generator = serve.deployment(
        name="Generator",
        max_ongoing_requests=1,  # one job at a time per replica: Serve routes to a free one
        ray_actor_options=actor,
        graceful_shutdown_timeout_s=5,
        **generator_replicas(config),
    )(Generator)
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=1,  # it holds the job table (a second one would need a shared store)
        max_ongoing_requests=1000,  # light requests; the job queue is bounded by --max-queue
        ray_actor_options={"num_cpus": 0},
    )(serve.ingress(_asgi_factory(config, page))(_Ingress))
    return ingress.bind(generator.bind(config, upscaler), config)


def run_server(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    page: bool = True,
    block: bool = True,
    log=print,
) -> None:
    """Start or join Ray, deploy the application, serve until interrupted (``block``)."""
    import ray
    from ray import serve

    if address:
        ray.init(address=address)
    elif not ray.is_initialized():
        ray.init()
    gpus = ray.cluster_resources().get("GPU", 0)
    serve.start(http_options={"host": host, "port": port})
    where = "CPU" if not gpus else f"{gpu_share(gpus, config.all_replicas):.2g} GPU each"
    sr = f" and {config.sr_replicas} upscaler replica(s)" if config.upscale else ""
    count = str(config.replicas)
    if "autoscaling_config" in generator_replicas(config):
        count += f" to {config.max_replicas} (autoscaled)"
    log(f"deploying {count} generator replica(s){sr} ({where}) ...")
    serve.run(build_application(config, gpus, page), name=APP_NAME, route_prefix="/")
    log(f"serving on http://{host}:{port}  (API: /v1/videos, docs: /docs, page: /)")
    if not block:
        return
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
