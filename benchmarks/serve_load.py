"""Load test of `gligen-rt serve` (or of its Triton repository) on loopback: phases of N concurrent
clients, every image checked.

    python -m gligen_rt.benchmarks.serve_load --model tiny --requests 200 --clients 4,8,16
    python -m gligen_rt.benchmarks.serve_load --server triton --model tiny --requests 200 --clients 4,8,16

Starts the server as a child process (its RSS is the server's alone; with --server triton the
repository of `gligen-rt triton-repo` for the same engines on the local tritonserver of
benchmarks/triton_local.py, whose RSS is tritonserver's plus its Python-backend stub processes'),
warms it up, then sends `--requests` requests split over the phases, each with its own seed.
Checks that every request is answered exactly once (none lost, none duplicated), that every image
equals the image a direct GligenPipeline call on the same engines gives for the same request, and
that the server's RSS grew by less than `--max-rss-growth` from after the warm-up to the end.
Prints one JSON line (and appends it to --out): per phase p50/p95/p99 latency and throughput, RSS,
the environment. Exits 1 when a check fails.

`run_phase` and `check` are also used by tests/test_serve_load.py on an in-process server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BASE = {
    "prompt": "a cat and a dog on a sofa",
    "objects": [
        {"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9]},
        {"phrase": "a dog", "box": [0.55, 0.3, 0.95, 0.8]},
    ],
}


@dataclass
class Record:
    """One answered (or failed) request: the seed it carried, the answer's seed, its image, seconds."""

    seed: int
    answered_seed: int | None
    image: np.ndarray | None
    seconds: float
    error: str | None = None


def bodies(n: int, first_seed: int, steps: int, size: int) -> list[dict[str, Any]]:
    """`n` requests with seeds first_seed .. first_seed + n - 1 (the seed identifies a request)."""
    return [{**BASE, "seed": first_seed + i, "steps": steps, "height": size, "width": size} for i in range(n)]


def http_sender(url: str, timeout: float = 300.0) -> Callable[[Any, dict[str, Any]], tuple[int, np.ndarray]]:
    """A sender for `gligen-rt serve`: (httpx client, body) -> (answered seed, image (H, W, 3) uint8)."""
    from gligen_rt.serve.payload import decode_base64

    def send(client: Any, body: dict[str, Any]) -> tuple[int, np.ndarray]:
        r = client.post(f"{url}/v1/generate", json=body, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        d = r.json()
        return int(d["seed"]), _decode(decode_base64(d["images"][0], "image"))

    return send


def triton_sender(url: str, model: str = "gligen", timeout: float = 300.0):
    """A sender for the Triton repository of `gligen-rt triton-repo` (KServe v2 JSON over HTTP)."""

    def send(client: Any, body: dict[str, Any]) -> tuple[int, np.ndarray]:
        payload = {
            "inputs": [{"name": "REQUEST", "shape": [1], "datatype": "BYTES", "data": [json.dumps(body)]}]
        }
        r = client.post(f"{url}/v2/models/{model}/infer", json=payload, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        out = {o["name"]: o for o in r.json()["outputs"]}
        images = np.asarray(out["IMAGES"]["data"], dtype=np.uint8).reshape(out["IMAGES"]["shape"])
        return int(out["SEED"]["data"][0]), images[0]

    return send


def _decode(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def run_phase(
    send: Callable[[Any, dict[str, Any]], tuple[int, np.ndarray]],
    work: Sequence[dict[str, Any]],
    clients: int,
    deadline: float,
) -> tuple[list[Record], float]:
    """Send `work` from `clients` threads (each its own httpx client); (records, wall seconds).

    A client stops taking work after `deadline` (time.monotonic()); what it never sent is missing
    from the records (and so counted as lost by `check`).
    """
    import httpx

    todo: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    for body in work:
        todo.put(body)
    records: list[Record] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                tic = time.perf_counter()
                try:
                    seed, image = send(client, body)
                    rec = Record(body["seed"], seed, image, time.perf_counter() - tic)
                except Exception as e:  # recorded and reported by check(), never hidden
                    rec = Record(
                        body["seed"], None, None, time.perf_counter() - tic, f"{type(e).__name__}: {e}"
                    )
                with lock:
                    records.append(rec)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - t0


def check(records: Sequence[Record], expected: dict[int, np.ndarray]) -> list[str]:
    """Problems (empty when all is well): errors, lost, duplicated, wrong seeds, images that differ."""
    problems = [f"seed {r.seed}: {r.error}" for r in records if r.error]
    sent = [r.seed for r in records]
    lost = sorted(set(expected) - set(sent))
    if lost:
        problems.append(f"{len(lost)} requests lost (seeds {lost[:10]})")
    dup = sorted({s for s in sent if sent.count(s) > 1})
    if dup:
        problems.append(f"{len(dup)} requests answered more than once (seeds {dup[:10]})")
    for r in records:
        if r.error:
            continue
        if r.answered_seed != r.seed:
            problems.append(f"seed {r.seed} answered with seed {r.answered_seed}")
        elif r.seed in expected and not np.array_equal(r.image, expected[r.seed]):
            diff = np.abs(r.image.astype(np.int16) - expected[r.seed].astype(np.int16)).max()
            problems.append(f"seed {r.seed}: image differs from the direct call (max |diff| {diff})")
    return problems


def latency_stats(records: Sequence[Record], wall: float) -> dict[str, float]:
    ok = np.array([r.seconds for r in records if not r.error])
    if ok.size == 0:
        return {"requests": len(records), "ok": 0}
    return {
        "requests": len(records),
        "ok": int(ok.size),
        "p50_s": round(float(np.percentile(ok, 50)), 4),
        "p95_s": round(float(np.percentile(ok, 95)), 4),
        "p99_s": round(float(np.percentile(ok, 99)), 4),
        "max_s": round(float(ok.max()), 4),
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok.size / wall, 3),
    }


# -- the benchmark: a server child process ------------------------------------------------------


class RssSampler:
    """Samples the RSS of a process and its descendants (summed) every `period` seconds in a thread;
    `peak` is the largest seen."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        import psutil

        rss = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.NoSuchProcess:  # ended between the listing and the read
                pass
        self.peak = max(self.peak, rss)
        return rss

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.rss()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_server(serve_args: Sequence[str], timeout: float = 900.0) -> tuple[subprocess.Popen[str], str]:
    """`gligen-rt serve --port 0 ARGS` as a child; (process, base URL) once /readyz answers."""
    import httpx

    cmd = [sys.executable, "-m", "gligen_rt.cli", "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    url = None
    lines: list[str] = []
    while url is None:
        line = proc.stderr.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"the server exited ({proc.returncode}): {''.join(lines[-5:]).strip()}")
        lines.append(line)
        m = re.search(r"http://([\d.]+):(\d+)/", line)
        if m:
            url = f"http://{m.group(1)}:{m.group(2)}"
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start in time")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server never became ready")
        time.sleep(0.2)


def expected_images(pipe: Any, work: Sequence[dict[str, Any]]) -> dict[int, np.ndarray]:
    """{seed: image} from direct GligenPipeline calls on the same engines."""
    from gligen_rt.core.request import request_from_json

    return {b["seed"]: pipe(request_from_json(b)).images[0] for b in work}


def split(total: int, phases: int) -> list[int]:
    return [total // phases + (1 if i >= phases - total % phases else 0) for i in range(phases)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=None, help="engine folder (default: the embedded --model)")
    p.add_argument("--model", default="tiny", help="embedded model when no --engines (default: tiny)")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--requests", type=int, default=200, help="requests in all phases together")
    p.add_argument("--clients", default="4,8,16", help="concurrent clients per phase")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="image height and width")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds for all phases together")
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=None, help="the server's --concurrency")
    p.add_argument(
        "--server",
        default="ours",
        choices=["ours", "triton"],
        help="ours: `gligen-rt serve`; triton: the `triton-repo` repository on the local tritonserver",
    )
    p.add_argument(
        "--engine-models",
        default="none",
        choices=["none", "python"],
        help="with --server triton: the repository's --engine-models (the local server has only the Python backend)",
    )
    p.add_argument("--out", type=Path, default=None, help="also append the JSON line to this .jsonl file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    from gligen_rt.benchmarks.env import environment
    from gligen_rt.runtime.cli import open_pipeline

    phases = [int(c) for c in args.clients.split(",")]
    serve_args = ["--backend", args.backend, "--max-queue", str(max(phases) * 2)]
    serve_args += ["--engines", args.engines] if args.engines else ["--model", args.model]
    if args.concurrency:
        serve_args += ["--concurrency", str(args.concurrency)]

    counts = split(args.requests, len(phases))
    work, seed = [], 1000
    for n in counts:
        work.append(bodies(n, seed, args.steps, args.size))
        seed += n
    ns = argparse.Namespace(
        engines=args.engines,
        model=args.model,
        modality=None,
        inpaint=False,
        backend=args.backend,
        single_unet=False,
    )
    log.info("direct pipeline calls for the expected images (%d)", args.requests)
    with open_pipeline(ns) as pipe:
        expected = expected_images(pipe, [b for w in work for b in w])
        folder = pipe.folder.path
        model = {"name": pipe.config.name, "modality": pipe.config.modality.value, "engines": folder.name}

    result: dict[str, Any] = {"benchmark": "serve_load", "server": args.server, "model": model}
    if args.server == "ours":
        proc, url = start_server(serve_args)
        pid, send, stop = proc.pid, http_sender(url), lambda: _stop(proc)
        result.update(url=url, serve_args=serve_args)
    else:
        pid, send, stop, info = start_triton(folder, args.backend, args.engine_models)
        result.update(info)
    load_start = os.getloadavg()  # the machine may be shared: the numbers mean more with it
    try:
        with RssSampler(pid) as rss:
            warm = bodies(max(phases), 0, args.steps, args.size)
            run_phase(send, warm, max(phases), time.monotonic() + args.time_limit)
            rss_start = rss.rss()
            deadline = time.monotonic() + args.time_limit
            records: list[Record] = []
            result["phases"] = []
            for clients, w in zip(phases, work):
                log.info("%d clients, %d requests", clients, len(w))
                recs, wall = run_phase(send, w, clients, deadline)
                records += recs
                result["phases"].append({"clients": clients, **latency_stats(recs, wall)})
            rss_end = rss.rss()
        problems = check(records, expected)
        growth = rss_end / rss_start - 1.0
        if growth >= args.max_rss_growth:
            problems.append(f"server RSS grew {growth:.1%} (limit {args.max_rss_growth:.0%})")
        result.update(
            requests=args.requests,
            steps=args.steps,
            size=args.size,
            backend=args.backend,
            answered=len(records),
            rss_start_mb=round(rss_start / 2**20, 1),
            rss_end_mb=round(rss_end / 2**20, 1),
            rss_peak_mb=round(rss.peak / 2**20, 1),
            rss_growth=round(growth, 4),
            load_avg_1m={"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
            problems=problems,
            ok=not problems,
            env=environment(),
        )
    finally:
        stop()
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        append_line(args.out, line)
    return 0 if result.get("ok") else 1


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_triton(
    folder: Path, backend: str, engine_models: str
) -> tuple[int, Any, Callable[[], None], dict[str, Any]]:
    """The `triton-repo` repository of `folder` on the local tritonserver: (its pid, a sender, a
    stop function that also removes the repository, what the JSON line says about it)."""
    import httpx

    from gligen_rt.serve.triton import write_repository

    from .triton_local import TritonServer

    work = Path(tempfile.mkdtemp(prefix="gligen-triton-load-"))
    try:
        repo = write_repository(folder, work / "repo", backend=backend, engine_models=engine_models)
        server = TritonServer(repo, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    def stop() -> None:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    meta = httpx.get(f"{server.url}/v2", timeout=10).json()
    info = {
        "url": server.url,
        "triton": {"name": meta.get("name"), "version": meta.get("version")},
        "repository": {
            "engine_models": engine_models,
            "backend": backend,
            "instances": 1,
            "kind": "KIND_CPU",
        },
    }
    return server.proc.pid, triton_sender(server.url), stop, info


def append_line(path: Path, line: str) -> None:
    """Append `line` to `path` through a temporary file renamed into place (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(old + line + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
