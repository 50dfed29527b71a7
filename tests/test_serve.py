"""The HTTP server (gligen_rt/serve) on a real uvicorn on loopback, over the tiny text-box engines:
results equal to direct pipeline calls, progress events, the bounded queue, timeouts, cancellation,
20 malformed requests with their statuses and one-line messages, and metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_support import HeldPipeline, LiveServer, decode_png, png_b64
from test_runtime_support import engine_folder

from gligen_rt.core.request import request_from_json
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.serve import ServerLimits, create_app

httpx = pytest.importorskip("httpx")

BODY = {
    "prompt": "a cat and a dog",
    "objects": [
        {"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9]},
        {"phrase": "a dog", "box": [0.55, 0.3, 0.95, 0.8]},
    ],
    "steps": 3,
    "height": 64,
    "width": 64,
}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    with GligenPipeline.from_engines(engine_folder(tmp_path_factory, "text-box"), "ort-cpu") as p:
        yield p


@pytest.fixture(scope="module")
def server(pipe):
    with LiveServer(create_app(pipe, ServerLimits(concurrency=1, max_queue=8, max_body_bytes=2**20))) as s:
        yield s


def direct(pipe, body: dict) -> np.ndarray:
    return pipe(request_from_json(body)).images


def test_info_health_and_page(server) -> None:
    info = httpx.get(f"{server.url}/v1/info").json()
    assert info["modality"] == "text-box" and info["inpaint"] is False
    assert info["max_objects"] == 30 and "plms" in info["samplers"]
    assert info["default_guidance"] == 7.5  # no model scale given: the request's default
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert httpx.get(f"{server.url}/static/app.js").status_code == 200


def test_a_model_guidance_fills_requests_that_name_none(pipe) -> None:
    """create_app(guidance=...) (`serve --model tiny`): the model's scale where the body gives none,
    the body's where it does; /v1/info shows it for the page's field."""
    body = {**BODY, "seed": 2}
    with LiveServer(create_app(pipe, guidance=2.0)) as s:
        assert httpx.get(f"{s.url}/v1/info").json()["default_guidance"] == 2.0
        got = httpx.post(f"{s.url}/v1/generate", json=body, timeout=60).json()
        assert got["request"]["guidance"] == 2.0
        assert np.array_equal(decode_png(got["images"][0]), direct(pipe, {**body, "guidance": 2.0})[0])
        named = httpx.post(f"{s.url}/v1/generate", json={**body, "guidance": 4}, timeout=60).json()
        assert named["request"]["guidance"] == 4.0


def test_generate_json_and_png_equal_a_direct_call(server, pipe) -> None:
    want = direct(pipe, {**BODY, "seed": 5})
    r = httpx.post(f"{server.url}/v1/generate", json={**BODY, "seed": 5}, timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["seed"] == 5 and (d["height"], d["width"]) == (64, 64) and len(d["images"]) == 1
    assert np.array_equal(decode_png(d["images"][0]), want[0])
    assert d["request"]["objects"][1]["phrase"] == "a dog"
    assert {"denoise", "queue", "total"} <= set(d["timings"])

    r = httpx.post(f"{server.url}/v1/generate?format=png", json={**BODY, "seed": 5}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(decode_png(r.content), want[0])

    two = httpx.post(f"{server.url}/v1/generate", json={**BODY, "num_images": 2}, timeout=60).json()
    assert np.array_equal(
        np.stack([decode_png(i) for i in two["images"]]), direct(pipe, {**BODY, "num_images": 2})
    )


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_reports_every_step_then_the_result(server, pipe) -> None:
    r = httpx.post(f"{server.url}/v1/generate/stream", json={**BODY, "steps": 4, "seed": 2}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [e for e, _ in events] == ["queued", "progress", "progress", "progress", "progress", "result"]
    assert [d["step"] for e, d in events if e == "progress"] == [1, 2, 3, 4]
    result = events[-1][1]
    assert np.array_equal(decode_png(result["images"][0]), direct(pipe, {**BODY, "steps": 4, "seed": 2})[0])
    bad = httpx.post(f"{server.url}/v1/generate/stream", json={**BODY, "steps": 0}, timeout=60)
    assert bad.status_code == 422 and "steps must be an integer" in bad.json()["error"]


def _multipart(request: dict, **files: bytes) -> dict:
    """httpx arguments of a multipart/form-data body: the `request` field and file parts."""
    parts = {"request": (None, json.dumps(request).encode())}
    return {"files": {**parts, **{k: (k, v) for k, v in files.items()}}}


MALFORMED = [
    # (name, kwargs for httpx.post, status, a fragment of the one-line message)
    (
        "bad JSON",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    (
        "not UTF-8",
        {"content": b"\xff\xfe{}", "headers": {"content-type": "application/json"}},
        400,
        "not UTF-8",
    ),
    ("JSON list", {"json": [1, 2]}, 422, "must be a JSON object"),
    ("no prompt", {"json": {"steps": 3}}, 422, "has no 'prompt'"),
    ("prompt not a string", {"json": {"prompt": 3}}, 422, "prompt must be a string"),
    ("steps as a string", {"json": {**BODY, "steps": "3"}}, 422, "steps must be an integer"),
    ("guidance as a list", {"json": {**BODY, "guidance": [1]}}, 422, "guidance must be a number"),
    ("unknown field", {"json": {**BODY, "colour": "red"}}, 422, "unknown key 'colour'"),
    (
        "unknown object field",
        {"json": {"prompt": "x", "objects": [{"box": [0, 0, 1, 1], "phrase": "a", "z": 1}]}},
        422,
        "unknown key 'z'",
    ),
    (
        "box outside [0,1]",
        {"json": {"prompt": "x", "objects": [{"phrase": "a", "box": [0.1, 0.1, 1.5, 0.5]}]}},
        422,
        "outside [0, 1]",
    ),
    (
        "flipped box",
        {"json": {"prompt": "x", "objects": [{"phrase": "a", "box": [0.6, 0.1, 0.2, 0.5]}]}},
        422,
        "empty or flipped",
    ),
    (
        "3-number box",
        {"json": {"prompt": "x", "objects": [{"phrase": "a", "box": [0.1, 0.1, 0.5]}]}},
        422,
        "must have 4 numbers",
    ),
    (
        "empty phrase",
        {"json": {"prompt": "x", "objects": [{"phrase": " ", "box": [0.1, 0.1, 0.5, 0.5]}]}},
        422,
        "has no phrase",
    ),
    (
        "31 objects",
        {"json": {"prompt": "x", "objects": [{"phrase": "a", "box": [0.1, 0.1, 0.5, 0.5]}] * 31}},
        422,
        "at most 30",
    ),
    (
        "NaN guidance",
        {"content": b'{"prompt": "x", "guidance": NaN}', "headers": {"content-type": "application/json"}},
        422,
        "finite number",
    ),
    (
        "image that is not one",
        _multipart({"prompt": "x"}, condition=b"not an image at all"),
        422,
        "not an image",
    ),
    (
        "file path as image",
        {"json": {"prompt": "x", "condition": "/etc/passwd"}},
        422,
        "does not read file paths",
    ),
    ("size not a multiple of 64", {"json": {**BODY, "height": 100}}, 422, "not a positive multiple of 64"),
    (
        "wrong content type",
        {"content": b"prompt=x", "headers": {"content-type": "text/plain"}},
        415,
        "is not accepted",
    ),
    (
        "huge body",
        {"content": b"{" + b" " * (2**20 + 10) + b"}", "headers": {"content-type": "application/json"}},
        413,
        "larger than",
    ),
    ("unknown form field", _multipart({"prompt": "x"}, photo=b"x"), 422, "unknown form field"),
    ("unknown sampler", {"json": {**BODY, "sampler": "magic"}}, 422, "unknown sampler"),
]


def test_malformed_requests_get_their_status_and_one_line(server, pipe) -> None:
    assert len(MALFORMED) >= 20
    for name, kwargs, status, fragment in MALFORMED:
        r = httpx.post(f"{server.url}/v1/generate", timeout=30, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        message = r.json()["error"]
        assert fragment in message and "\n" not in message, (name, message)
    # still serving, and still right
    r = httpx.post(f"{server.url}/v1/generate", json=BODY, timeout=60)
    assert r.status_code == 200 and np.array_equal(decode_png(r.json()["images"][0]), direct(pipe, BODY)[0])
    assert httpx.get(f"{server.url}/nowhere").status_code == 404
    assert httpx.get(f"{server.url}/v1/generate").status_code == 405


def test_multipart_request_and_format_choice(server, pipe) -> None:
    r = httpx.post(f"{server.url}/v1/generate", timeout=60, **_multipart(BODY))
    assert r.status_code == 200 and np.array_equal(decode_png(r.json()["images"][0]), direct(pipe, BODY)[0])
    png = httpx.post(f"{server.url}/v1/generate", json=BODY, headers={"accept": "image/png"}, timeout=60)
    assert png.headers["content-type"] == "image/png"
    r = httpx.post(f"{server.url}/v1/generate?format=png", json={**BODY, "num_images": 2}, timeout=60)
    assert r.status_code == 422 and "format=json" in r.json()["error"]


def test_full_queue_503_timeout_504_and_cancel(pipe) -> None:
    held = HeldPipeline(pipe)
    limits = ServerLimits(concurrency=1, max_queue=1, timeout_s=30)
    with LiveServer(create_app(held, limits)) as s, httpx.Client(timeout=60) as client:
        held.hold.clear()

        answers: list[int] = []
        first = threading.Thread(
            target=lambda: answers.append(client.post(f"{s.url}/v1/generate", json=BODY).status_code)
        )
        first.start()
        assert held.entered.wait(30)
        second = threading.Thread(
            target=lambda: answers.append(client.post(f"{s.url}/v1/generate", json=BODY).status_code)
        )
        second.start()
        deadline = time.monotonic() + 30
        while s.server.config.app.state.runner.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        full = client.post(f"{s.url}/v1/generate", json=BODY)
        assert full.status_code == 503 and "queue is full" in full.json()["error"]
        assert full.headers["retry-after"] == "5"
        held.hold.set()
        first.join(60)
        second.join(60)
        assert answers == [200, 200]

        # a client that goes away: its job stops at the next step, the server goes on
        held.hold.clear()
        held.entered.clear()
        held.steps_run = 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{s.url}/v1/generate", json={**BODY, "steps": 50}, timeout=httpx.Timeout(60, read=1.0)
            )
        time.sleep(0.5)  # the server polls for gone clients every 0.1 s
        held.hold.set()
        deadline = time.monotonic() + 30
        while s.server.config.app.state.runner.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 1 <= held.steps_run < 50
        metrics = client.get(f"{s.url}/metrics").text
        assert 'gligen_errors_total{kind="cancelled"} 1.0' in metrics
        assert 'gligen_errors_total{kind="queue_full"} 1.0' in metrics
        assert client.post(f"{s.url}/v1/generate", json=BODY).status_code == 200

    limits = ServerLimits(concurrency=1, max_queue=4, timeout_s=0.5)
    with LiveServer(create_app(held, limits)) as s:
        held.hold.clear()
        r = httpx.post(f"{s.url}/v1/generate", json=BODY, timeout=30)
        held.hold.set()
        assert r.status_code == 504 and "longer than 0.5 s" in r.json()["error"]


def test_metrics_count_requests_stages_and_errors(server) -> None:
    httpx.post(f"{server.url}/v1/generate", json=BODY, timeout=60)
    httpx.post(f"{server.url}/v1/generate", json={**BODY, "steps": -1}, timeout=60)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'gligen_requests_total{code="200",endpoint="/v1/generate"}' in text
    assert 'gligen_errors_total{kind="validation"}' in text
    assert 'gligen_stage_seconds_count{stage="denoise"}' in text
    assert "gligen_queue_depth 0.0" in text and "gligen_running 0.0" in text


def test_text_image_box_uploads(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Reference images as base64 and as multipart parts give the image of a direct call on files."""
    folder = engine_folder(tmp_path_factory, "text-image-box", plain=False)
    rng = np.random.default_rng(3)
    ref = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(ref).save(tmp_path / "ref.png")
    body = {
        "prompt": "x",
        "objects": [{"phrase": "a cat", "box": [0.1, 0.1, 0.6, 0.6]}],
        "steps": 2,
        "height": 64,
        "width": 64,
    }
    with (
        GligenPipeline.from_engines(folder, "ort-cpu", single_unet=True) as p,
        LiveServer(create_app(p)) as s,
    ):
        local = {**body, "objects": [{**body["objects"][0], "image": str(tmp_path / "ref.png")}]}
        want = direct(p, local)[0]
        sent = {**body, "objects": [{**body["objects"][0], "image": "data:image/png;base64," + png_b64(ref)}]}
        r = httpx.post(f"{s.url}/v1/generate", json=sent, timeout=60)
        assert r.status_code == 200, r.text
        assert np.array_equal(decode_png(r.json()["images"][0]), want)
        r = httpx.post(
            f"{s.url}/v1/generate",
            timeout=60,
            **_multipart(body, **{"objects[0].image": (tmp_path / "ref.png").read_bytes()}),
        )
        assert r.status_code == 200, r.text
        assert np.array_equal(decode_png(r.json()["images"][0]), want)
        assert "image" not in r.json()["request"]["objects"][0]  # server-side paths are not echoed
