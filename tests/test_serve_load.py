"""A small version of the server load test (benchmarks/serve_load.py) for correctness, not speed:
4 then 8 concurrent clients on loopback; every request answered exactly once, every image equal to
a direct GligenPipeline call for the same request."""

from __future__ import annotations

import time

import pytest
from serve_support import LiveServer
from test_runtime_support import engine_folder

from gligen_rt.benchmarks.serve_load import bodies, check, expected_images, http_sender, run_phase, split
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.serve import ServerLimits, create_app

REQUESTS = 12


def test_concurrent_clients_get_their_own_exact_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    with GligenPipeline.from_engines(engine_folder(tmp_path_factory, "text-box"), "ort-cpu") as pipe:
        work, seed = [], 100
        for n in split(REQUESTS, 2):
            work.append(bodies(n, seed, steps=1, size=64))
            seed += n
        expected = expected_images(pipe, [b for w in work for b in w])
        assert len({im.tobytes() for im in expected.values()}) == REQUESTS  # seeds tell requests apart
        with LiveServer(create_app(pipe, ServerLimits(concurrency=2, max_queue=16))) as server:
            send = http_sender(server.url)
            records = []
            for clients, w in zip((4, 8), work):
                recs, _ = run_phase(send, w, clients, time.monotonic() + 300)
                records += recs
    assert len(records) == REQUESTS
    assert check(records, expected) == []
    # the checker itself notices a lost, a duplicated and a wrong answer
    broken = records[1:] + [records[2]]
    broken[0] = type(broken[0])(broken[0].seed, broken[0].seed + 1, broken[0].image, 0.0)
    problems = " | ".join(check(broken, expected))
    assert "lost" in problems and "more than once" in problems and "answered with seed" in problems
