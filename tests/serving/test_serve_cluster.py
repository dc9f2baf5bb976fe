"""`hallo2rt serve` on a real local Ray cluster (``ray.init(num_cpus=2)``): two generator
replicas, the HTTP proxy, jobs over HTTP with the Python client. Nothing Ray provides is
mocked. Tiny checkpoint tree, PyTorch engines at 64 px, one thread per replica."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from hallo2rt.cli import main

from .conftest import FACE, serve_config

av = pytest.importorskip("av")
TOKEN = "t0ken"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_root, tmp_path_factory):
    import ray
    from ray import serve

    from hallo2rt.serve.app import APP_NAME, build_application

    config = serve_config(
        tiny_root,
        tmp_path_factory.mktemp("served"),
        replicas=2,
        max_queue=3,
        token=TOKEN,
        upscale=True,  # and an Upscaler replica (one CPU of its own)
    )
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(config, page=False), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", config
    finally:
        serve.shutdown()
        ray.shutdown()


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _client(url, token=TOKEN):
    from hallo2rt.serve import Client

    return Client(url, token)


def _submit(client, files, audio="audio", **options):
    return client.submit(
        files["image"], files[audio], files["face_embedding"], **{**FACE, "steps": 2, **options}
    )


def _until(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_three_concurrent_jobs_equal_what_generate_writes(
    server, request_files, tiny_root, tmp_path
):
    url, config = server
    client = _client(url)
    seeds = (42, 7, 3)
    ids = [_submit(client, request_files, seed=s) for s in seeds]
    outs: dict[int, object] = {}

    def follow(job, seed):
        client.wait(job)
        outs[seed] = client.download(job, tmp_path / f"served-{seed}.mp4")

    threads = [
        threading.Thread(target=follow, args=(j, s)) for j, s in zip(ids, seeds, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(outs) == sorted(seeds)
    for seed in seeds:
        ref = tmp_path / f"generate-{seed}.mp4"
        argv = ["generate", "--checkpoints", str(tiny_root), "--size", "64", "--threads", "1"]
        argv += ["--image", str(request_files["image"]), "--audio", str(request_files["audio"])]
        argv += ["--face-embedding", str(request_files["face_embedding"])]
        argv += ["--face-box", FACE["face_box"], "--steps", "2", "--seed", str(seed)]
        assert main([*argv, "--out", str(ref), "--quiet"]) == 0
        got, want = _frames(outs[seed]), _frames(ref)
        assert got.shape == want.shape == (10, 64, 64, 3)
        assert np.array_equal(got, want), f"seed {seed}: the served video differs"
        with av.open(str(outs[seed])) as c:
            assert len(c.streams.audio) == 1
    assert len({_frames(outs[s]).tobytes() for s in seeds}) == 3  # the seeds matter
    for job in ids:
        assert sorted(p.name for p in (config.results / job).iterdir()) == ["video.mp4"]


def test_submit_follows_a_job_and_downloads_it(server, request_files, tmp_path, capsys):
    url, _ = server
    (tmp_path / "token").write_text(TOKEN + "\n")
    out = tmp_path / "submitted.mp4"
    argv = ["submit", url, "--image", str(request_files["image"])]
    argv += ["--audio", str(request_files["audio"]), "--face-embedding"]
    argv += [str(request_files["face_embedding"]), "--face-box", FACE["face_box"], "--steps", "2"]
    assert main([*argv, "--out", str(out), "--token-file", str(tmp_path / "token")]) == 0
    assert _frames(out).shape == (10, 64, 64, 3)
    assert f"wrote {out}" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "x.mp4")]) == 1  # no token: 401, said once
    assert "401: missing or wrong bearer token" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_tokens_and_bad_uploads_are_refused_over_http(server, request_files):
    from hallo2rt.serve import ServerError

    url, _ = server
    with pytest.raises(ServerError, match="401: missing or wrong bearer token"):
        _submit(_client(url, token=None), request_files)
    with pytest.raises(ServerError, match="401"):
        _client(url, token="wrong").status("nope")
    with pytest.raises(ServerError, match=r"422: audio/text.txt could not be"):
        _submit(_client(url), request_files, audio="text")
    with pytest.raises(ServerError, match=r"400: unknown form fields \['colour'\]"):
        _submit(_client(url), request_files, colour="red")


def test_an_upscaled_job_is_restored_by_the_upscaler_replica(server, request_files, tmp_path):
    """upscale 2 over HTTP: the generator replica hands its SR windows to the Upscaler replica
    (another process: frames and state cross Ray's object store) and the video is twice the
    size, every frame, with its audio. (Frame-for-frame equality with ``generate --upscale``:
    test_serve_local.)"""
    from hallo2rt.serve import ServerError

    url, _ = server
    client = _client(url)
    with pytest.raises(ServerError, match=r"400: upscale: invalid choice"):
        _submit(client, request_files, upscale=3)
    job = _submit(client, request_files, audio="two", upscale=2, fidelity=0.7)
    state = client.wait(job)
    assert state["state"] == "done", state
    out = client.download(job, tmp_path / "up.mp4")
    assert _frames(out).shape == (20, 128, 128, 3)
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
    # the Upscaler's own errors reach the generator as themselves, not as Ray's traceback
    from ray import serve

    from hallo2rt.engines.errors import OptionError
    from hallo2rt.serve.app import APP_NAME
    from hallo2rt.serve.worker import _RemoteRestorer

    restorer = _RemoteRestorer(serve.get_deployment_handle("Upscaler", app_name=APP_NAME))
    assert restorer.geometry(64, 64, 2, 0.7)[1] > 0  # (window, overlap)
    with pytest.raises(OptionError) as refused:
        restorer.geometry(64, 64, 3, 0.7)
    assert str(refused.value).startswith("--upscale 3: must be one of")


def test_full_queue_cancel_and_a_killed_replica(server, request_files):
    """Three long jobs fill the queue (a fourth: 429); one is cancelled mid-run, and killing the
    generator replicas fails the others; none leaves a file."""
    import ray

    url, config = server
    client = _client(url)
    jobs = [_submit(client, request_files, audio="long", steps=10) for _ in range(3)]
    from hallo2rt.serve import ServerError

    with pytest.raises(ServerError, match="429: the queue is full"):
        _submit(client, request_files)
    running = _until(lambda: [j for j in jobs if client.status(j)["step"] >= 1])
    cancelled = running[0]
    assert client.cancel(cancelled)["state"] == "cancelled"
    assert not (config.results / cancelled).exists()
    others = [j for j in jobs if j != cancelled]
    _until(lambda: any(client.status(j)["state"] == "running" for j in others))
    names = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "Generator" in a["name"] and a["name"].startswith("SERVE_REPLICA")
    ]
    assert names, "no generator replica actors found"
    for a in names:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
    states = [
        _until(lambda j=j: client.status(j)["state"] in ("failed", "done") and client.status(j))
        for j in others
    ]
    failed = [s for s in states if s["state"] == "failed"]
    assert failed, states
    for s in failed:
        assert "the generator replica stopped" in s["error"]
        assert not (config.results / s["id"]).exists()
    for s in states:  # a job the router re-sent to a restarted replica may have finished
        if s["state"] == "done":
            assert sorted(p.name for p in (config.results / s["id"]).iterdir()) == ["video.mp4"]
