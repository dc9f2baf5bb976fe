"""The server's pieces without a cluster: the generator deployment in Ray Serve's local testing
mode (``serve.run(app, _local_testing_mode=True)``), and the HTTP API (FastAPI's test client)
driving that same local deployment. Tiny checkpoint tree, PyTorch engines at 64 px."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from .conftest import FACE, serve_config

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def generator(tiny_root, tmp_path_factory):
    """The Generator deployment in local testing mode: a handle to it, and its config."""
    from ray import serve

    from hallo2rt.serve.worker import Generator

    config = serve_config(tiny_root, tmp_path_factory.mktemp("results"))
    deployment = serve.deployment(name="Generator", max_ongoing_requests=1)(Generator)
    handle = serve.run(deployment.bind(config), _local_testing_mode=True, name="local-generator")
    return handle.options(stream=True), config


def _spec(config, files, tmp_path, **fields):
    from hallo2rt.serve.jobs import check_request

    inputs = {k: files[k] for k in ("image", "audio", "face_embedding")}
    fields = {**FACE, "steps": "2", **{k: str(v) for k, v in fields.items()}}
    return check_request(config, inputs, fields, tmp_path / "video.mp4")


def _frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _rgb(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_the_generator_streams_progress_then_the_video(generator, request_files, tmp_path):
    handle, config = generator
    events = list(handle.run.remote(_spec(config, request_files, tmp_path)))
    states = [e["state"] for e in events if "state" in e]
    assert states[0] == "running" and states[-1] == "done"
    running = [e for e in events if e.get("state") == "running"]
    assert running[-1]["step"] == running[-1]["steps"] == 2  # one clip, two steps
    video = b"".join(e["chunk"] for e in events if "chunk" in e)
    assert len(video) == events[-1]["bytes"] > 1000
    (tmp_path / "got.mp4").write_bytes(video)
    assert _frames(tmp_path / "got.mp4") == 10  # 0.4 s at 25 fps


def test_the_intake_refuses_what_generate_refuses(generator, request_files, tmp_path):
    from hallo2rt.engines.errors import Hallo2rtError
    from hallo2rt.serve.jobs import RequestError

    _, config = generator
    with pytest.raises(RequestError, match=r"unknown form fields \['bogus'\]"):
        _spec(config, request_files, tmp_path, bogus=1)
    with pytest.raises(RequestError, match="steps = 'many': must be an integer"):
        _spec(config, request_files, tmp_path, steps="many")
    with pytest.raises(Hallo2rtError, match="--cfg"):
        _spec(config, request_files, tmp_path, cfg="nan")
    with pytest.raises(Hallo2rtError, match="must be four numbers"):
        _spec(config, request_files, tmp_path, face_box="1,2,3")
    files = {**request_files, "audio": request_files["text"]}
    with pytest.raises(Hallo2rtError, match="text.txt"):
        _spec(config, files, tmp_path)
    with pytest.raises(RequestError, match="does not upscale.*started without --upscale"):
        _spec(config, request_files, tmp_path, upscale=2)
    with pytest.raises(RequestError, match=r"upscale: invalid choice: '?3'? \(choose from 1, 2, 4"):
        _spec(config, request_files, tmp_path, upscale=3)
    with pytest.raises(RequestError, match=r"preset: invalid choice: '?quick'? \(choose from"):
        _spec(config, request_files, tmp_path, preset="quick")


def test_an_upscaling_server_restores_on_its_upscaler_and_equals_generate(
    tiny_root, request_files, tmp_path
):
    """Generator + Upscaler deployments (local testing mode): a job asking upscale 2 has its
    SR windows restored by the Upscaler while the generator goes on, and the video equals
    ``hallo2rt generate --upscale 2`` frame for frame (two clips, two SR windows)."""
    from ray import serve

    from hallo2rt.cli import main
    from hallo2rt.serve.worker import Generator, Upscaler

    config = serve_config(tiny_root, tmp_path / "results", upscale=True)
    upscaler = serve.deployment(name="Upscaler", max_ongoing_requests=1)(Upscaler).bind(config)
    app = serve.deployment(name="Generator", max_ongoing_requests=1)(Generator)
    handle = serve.run(
        app.bind(config, upscaler), _local_testing_mode=True, name="local-upscaling"
    ).options(stream=True)
    files = {**request_files, "audio": request_files["two"]}
    spec = _spec(config, files, tmp_path, upscale=2, fidelity=0.7)
    events = list(handle.run.remote(spec))
    assert events[-1]["state"] == "done", events[-1]
    (tmp_path / "served.mp4").write_bytes(b"".join(e["chunk"] for e in events if "chunk" in e))
    argv = ["generate", "--checkpoints", str(tiny_root), "--size", "64", "--threads", "1"]
    argv += ["--image", str(files["image"]), "--audio", str(files["audio"])]
    argv += ["--face-embedding", str(files["face_embedding"]), "--face-box", FACE["face_box"]]
    argv += ["--steps", "2", "--upscale", "2", "--fidelity", "0.7"]
    assert main([*argv, "--out", str(tmp_path / "ref.mp4"), "--quiet"]) == 0
    got, want = _rgb(tmp_path / "served.mp4"), _rgb(tmp_path / "ref.mp4")
    assert got.shape == want.shape == (20, 128, 128, 3)
    assert np.array_equal(got, want)


# --- the HTTP API on the local deployment -----------------------------------------------------


@pytest.fixture
def api(generator, tmp_path):
    """A test client of the API whose job manager streams through the local deployment."""
    from fastapi.testclient import TestClient

    from hallo2rt.serve.api import build_api
    from hallo2rt.serve.manager import JobManager

    handle, base = generator

    def make(**kw):
        import dataclasses

        config = dataclasses.replace(base, results=tmp_path / "results", **kw)
        holder = {}

        def manager():
            if "m" not in holder:  # made on the app's event loop, as on the ingress replica
                holder["m"] = JobManager(config, lambda spec: handle.run.remote(spec))
            return holder["m"]

        return TestClient(build_api(config, manager)), config

    return make


def _post(client, files, headers=None, audio="audio", **fields):
    data = {**FACE, "steps": "2", **{k: str(v) for k, v in fields.items()}}
    with (
        open(files["image"], "rb") as image,
        open(files[audio], "rb") as sound,
        open(files["face_embedding"], "rb") as emb,
    ):
        upload = {
            "image": ("p.jpg", image),
            "audio": (files[audio].name, sound),
            "face_embedding": ("e.npy", emb),
        }
        return client.post("/v1/videos", files=upload, data=data, headers=headers or {})


def _wait(client, job, headers=None, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        state = client.get(f"/v1/videos/{job}", headers=headers or {}).json()
        if state["state"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not end in {timeout} s")


def test_api_job_from_upload_to_video_with_events_and_ranges(api, request_files):
    client, config = api()
    with client:
        r = _post(client, request_files)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        with client.stream("GET", f"/v1/videos/{job}/events") as events:
            lines = [line for line in events.iter_lines() if line.startswith("data: ")]
        assert '"state": "done"' in lines[-1]
        assert _wait(client, job)["state"] == "done"
        video = client.get(f"/v1/videos/{job}/result")
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        part = client.get(f"/v1/videos/{job}/result", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == video.content[:100]
        assert sorted(p.name for p in (config.results / job).iterdir()) == ["video.mp4"]
        assert client.get("/healthz").json()["status"] == "ok"
        assert "/v1/videos" in client.get("/openapi.json").json()["paths"]
        gone = client.delete(f"/v1/videos/{job}").json()  # a finished job: its files go
        assert gone["state"] == "cancelled" and not (config.results / job).exists()


@pytest.mark.parametrize(
    ("kind", "status", "fragment"),
    [
        ("unknown-field", 400, "unknown form fields ['bogus']"),
        ("bad-number", 400, "steps = 'x': must be an integer"),
        ("not-audio", 422, "audio/text.txt could not be"),
        ("too-large", 413, "larger than"),
        ("unknown-job", 404, "no job"),
        ("not-finished", 409, "is queued"),
    ],
)
def test_api_refuses_bad_requests_with_the_problem_named(
    api, request_files, kind, status, fragment
):
    client, config = api(max_upload_mb=0.001 if kind == "too-large" else 50.0)
    with client:
        if kind == "unknown-field":
            r = _post(client, request_files, bogus=1)
        elif kind == "bad-number":
            r = _post(client, request_files, steps="x")
        elif kind == "not-audio":
            r = _post(client, request_files, audio="text")
        elif kind == "too-large":
            r = _post(client, request_files)
        elif kind == "unknown-job":
            r = client.get("/v1/videos/nope")
        else:
            job = _post(client, request_files).json()["id"]
            r = client.get(f"/v1/videos/{job}/result")
            _wait(client, job)
        assert r.status_code == status, r.text
        assert fragment in r.json()["error"]
        assert str(config.results) not in r.json()["error"]  # no server paths in messages
        if kind != "not-finished":  # a refused request leaves nothing behind
            assert not any(config.results.iterdir())


def test_api_token_full_queue_and_cancel(api, request_files):
    client, config = api(token="s3cret", max_queue=1)
    auth = {"Authorization": "Bearer s3cret"}
    with client:
        assert _post(client, request_files).status_code == 401
        assert _post(client, request_files, {"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/videos/x").status_code == 401
        r = _post(client, request_files, auth, audio="long", steps=20)  # 4 clips x 20 steps
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        full = _post(client, request_files, auth)
        assert full.status_code == 429 and "the queue is full" in full.json()["error"]
        while client.get(f"/v1/videos/{job}", headers=auth).json()["step"] < 2:
            time.sleep(0.1)
        state = client.delete(f"/v1/videos/{job}", headers=auth).json()
        assert state["state"] == "cancelled"
        assert not (config.results / job).exists()  # no partial video, no inputs


def test_a_dying_generator_fails_the_job_and_leaves_nothing(tmp_path):
    """A stream that breaks mid-job (what a killed replica looks like to the ingress)."""
    from hallo2rt.serve.jobs import ServeConfig
    from hallo2rt.serve.manager import JobManager

    async def broken(spec):
        yield {"state": "running", "clip": 0, "clips": 1, "step": 1, "steps": 2, "fps": 1.0,
               "eta_s": 1.0}  # fmt: skip
        yield {"chunk": b"half a video"}
        raise ConnectionError("the actor died")

    async def scenario():
        config = ServeConfig(checkpoints=tmp_path, results=tmp_path / "results")
        manager = JobManager(config, broken)

        async def save(folder):
            return {}

        job = await manager.submit(save, {}, check=lambda *a: {"spec": 1})
        await manager.tasks[job.id]
        return job, config

    job, config = asyncio.run(scenario())
    assert job.state == "failed" and "ConnectionError: the actor died" in job.error
    assert "submit the job again" in job.error
    assert not (config.results / job.id).exists()
    assert np.isfinite(job.finished)


# --- the web page in a real browser -------------------------------------------------------------


@pytest.fixture
def page_url(generator, tmp_path):
    """The API with its page, served by uvicorn on a free port (the local deployment behind)."""
    import socket
    import threading

    import uvicorn

    from hallo2rt.serve.api import build_api
    from hallo2rt.serve.manager import JobManager

    pytest.importorskip("gradio")
    handle, base = generator
    import dataclasses

    config = dataclasses.replace(base, results=tmp_path / "results")
    holder = {}

    def manager():
        if "m" not in holder:
            holder["m"] = JobManager(config, lambda spec: handle.run.remote(spec))
        return holder["m"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_api(config, manager, page=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.time() + 60
    while not server.started and time.time() < end:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_page_in_a_headless_browser_makes_a_video_that_plays(page_url, request_files):
    """Upload a portrait, audio and embedding, set the face box and steps, press Generate, see
    progress, and the video element plays the result (Debian's chromium and chromedriver)."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(arg)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    service = webdriver.ChromeService(executable_path=driver_path)
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(page_url + "/")  # redirects to the page
        wait = WebDriverWait(browser, 60)

        def element(css: str):
            # Gradio fetches each component type's script on its own, so one component can be
            # on the page while another is still loading (seen once in CI on a loaded machine)
            try:
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, css))
            except Exception as exc:
                body = browser.find_element(By.TAG_NAME, "body").get_attribute("innerHTML")
                raise AssertionError(f"no {css} on the page after 60 s: {body[:2000]}") from exc
            return browser.find_element(By.CSS_SELECTOR, css)

        for name in ("image", "audio", "face_embedding"):
            element(f"#{name} input[type=file]").send_keys(str(request_files[name]))
        box = element("#face_box textarea, #face_box input")
        box.send_keys(FACE["face_box"])
        steps = element("#steps input")
        steps.clear()
        steps.send_keys("2")
        # each upload has finished once its component shows the file, not an empty drop zone
        element("#image img")
        element("#audio audio")
        stem = request_files["face_embedding"].stem
        wait.until(lambda b: stem in b.find_element(By.CSS_SELECTOR, "#face_embedding").text)
        element("#generate").click()

        def finished(b):
            text = b.find_element(By.CSS_SELECTOR, "#status").text
            return "Done." in text or "Refused" in text or "Failed" in text

        WebDriverWait(browser, 180, poll_frequency=0.2).until(finished)
        status = browser.find_element(By.CSS_SELECTOR, "#status").text
        assert "Done." in status, status
        assert "Job" in status
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#video video"))
        played = browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const v = document.querySelector('#video video');
            v.muted = true;
            const check = () => (v.currentTime > 0 || v.ended)
                ? done({t: v.currentTime, d: v.duration, w: v.videoWidth, err: null})
                : setTimeout(check, 100);
            v.play().then(check).catch(e => done({err: String(e)}));
            """
        )
        assert played["err"] is None, played
        assert played["w"] == 64 and played["d"] == pytest.approx(0.4, abs=0.1)
    finally:
        browser.quit()


def test_a_server_on_built_engines_refuses_presets_whose_engines_it_lacks(request_files, tmp_path):
    """With --engines the intake checks that the folder has the step engines a request's
    options call, before the job is queued (the replicas open only what the folder has)."""
    from hallo2rt.serve.jobs import RequestError, ServeConfig, check_request, generate_argv

    engines = tmp_path / "engines"
    engines.mkdir()
    config = ServeConfig(engines=engines, results=tmp_path / "results")
    inputs = {k: request_files[k] for k in ("image", "audio", "face_embedding")}
    argv = generate_argv(config, inputs, {"steps": "3"}, tmp_path / "v.mp4")
    assert argv[argv.index("--engines") + 1] == str(engines) and "--checkpoints" not in argv
    fields = {**FACE, "preset": "fast", "guidance_steps": "0", "steps": "2"}
    with pytest.raises(RequestError, match="lack denoiser_cond.*preset = faithful"):
        check_request(config, inputs, fields, tmp_path / "v.mp4")
    (engines / "denoiser_cond").mkdir()
    spec = check_request(config, inputs, fields, tmp_path / "v.mp4")
    assert spec["cfg"].sampling.plan() == ("denoiser_cond", "denoiser_cond")


def test_concurrent_requests_cannot_overfill_the_queue(tmp_path):
    """A request holds its place while it is checked: two at once with one place left, one
    gets 429 (without the reservation both would pass the check and be queued)."""
    from hallo2rt.serve.jobs import RequestError, ServeConfig
    from hallo2rt.serve.manager import JobManager

    async def slow_generator(spec):
        await asyncio.sleep(30)
        yield {}

    async def scenario():
        config = ServeConfig(checkpoints=tmp_path, results=tmp_path / "results", max_queue=1)
        manager = JobManager(config, slow_generator)

        async def save(folder):
            await asyncio.sleep(0.1)  # an upload in progress
            return {}

        outcome = await asyncio.gather(
            *(manager.submit(save, {}, check=lambda *a: {}) for _ in range(2)),
            return_exceptions=True,
        )
        await manager.close()
        return outcome

    outcome = asyncio.run(scenario())
    refused = [r for r in outcome if isinstance(r, RequestError)]
    assert len(refused) == 1 and refused[0].status == 429, outcome


def test_upscaler_replicas_get_a_gpu_or_a_share_and_need_the_sr_engines(tmp_path):
    from hallo2rt.engines.errors import OptionError
    from hallo2rt.engines.spec import SUPER_RESOLUTION
    from hallo2rt.serve.app import gpu_share
    from hallo2rt.serve.jobs import ServeConfig

    assert gpu_share(8, 4) == 1.0  # enough GPUs: one each
    assert gpu_share(1, 2) == 0.5 and gpu_share(2, 3) == 0.5 and gpu_share(1, 3) == 1 / 3
    engines = tmp_path / "engines"
    engines.mkdir()
    with pytest.raises(OptionError, match="--upscale needs the super-resolution engines.*lacks"):
        ServeConfig(engines=engines, upscale=True)
    for name in SUPER_RESOLUTION:
        (engines / name).mkdir()
    config = ServeConfig(engines=engines, replicas=3, upscale=True, sr_replicas=2)
    assert config.all_replicas == 5  # the count whose share of the GPUs each replica asks
    with pytest.raises(OptionError, match="--sr-replicas 0"):
        ServeConfig(engines=engines, sr_replicas=0)


def test_the_page_behind_a_token_asks_for_it_as_the_password(tmp_path):
    """--token-file protects the page too: its config and queue answer 401 until the login
    form is given the token (any user name), and a wrong one is refused."""
    pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    from hallo2rt.serve.api import build_api
    from hallo2rt.serve.jobs import ServeConfig

    config = ServeConfig(engines=tmp_path, results=tmp_path / "results", token="s3cret")
    client = TestClient(build_api(config, lambda: None, page=True))
    assert client.get("/ui/config").status_code == 401
    assert client.post("/ui/gradio_api/queue/join", json={}).status_code == 401
    login = {"username": "anyone", "password": "wrong"}
    assert client.post("/ui/login", data=login).status_code == 400
    assert client.post("/ui/login", data={**login, "password": "s3cret"}).status_code == 200
    assert client.get("/ui/config").status_code == 200  # the login's cookie
    assert client.get("/v1/videos/x").status_code == 401  # the API still wants the header


def test_max_replicas_autoscales_the_generators_from_replicas(tmp_path):
    from hallo2rt.engines.errors import OptionError
    from hallo2rt.serve.app import build_application, generator_replicas
    from hallo2rt.serve.jobs import ServeConfig

    fixed = ServeConfig(checkpoints=tmp_path, replicas=2)
    assert generator_replicas(fixed) == {"num_replicas": 2}
    assert generator_replicas(ServeConfig(checkpoints=tmp_path, replicas=2, max_replicas=2)) == {
        "num_replicas": 2
    }
    scaled = ServeConfig(checkpoints=tmp_path, replicas=2, max_replicas=6)
    auto = generator_replicas(scaled)["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (
        2,
        6,
        1,
    )
    build_application(scaled, page=False)  # Ray Serve checks the autoscaling config here
    with pytest.raises(OptionError, match="--max-replicas 1: must be at least --replicas"):
        ServeConfig(checkpoints=tmp_path, replicas=2, max_replicas=1)
