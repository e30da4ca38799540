"""The demo's compute slots: large requests (full-size images) compute one at a time, small ones beside
them, and a request waiting for a slot holds none."""
import asyncio
import threading
import time

import pytest

import evmamba
from webapp import jobs
from webapp.settings import SETTINGS


@pytest.fixture
def slots(monkeypatch):
    monkeypatch.setattr(SETTINGS, "compute_slots", 2)
    monkeypatch.setattr(SETTINGS, "large_slots", 1)
    monkeypatch.setattr(SETTINGS, "time_limit", 30.0)
    jobs.reset_slots()
    yield
    jobs.reset_slots()


def run_together(calls):
    """Run (name, large) jobs at once; each records when it computed. Returns {name: (start, end)}."""
    spans, lock = {}, threading.Lock()

    def work(name, progress=None):
        start = time.monotonic()
        time.sleep(0.3)
        with lock:
            spans[name] = (start, time.monotonic())

    async def main():
        await asyncio.gather(*(jobs.run(work, name, large=large) for name, large in calls))
    asyncio.run(main())
    return spans


def overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_large_requests_compute_one_after_the_other(slots):
    spans = run_together([("large 1", True), ("large 2", True)])
    assert not overlap(spans["large 1"], spans["large 2"])


def test_a_small_request_computes_beside_a_large_one(slots):
    # the second large request waits for the large slot without holding a compute slot, so the small one
    # starts at once
    spans = run_together([("large 1", True), ("large 2", True), ("small", False)])
    first = min(spans["large 1"], spans["large 2"])
    assert overlap(spans["small"], first)
    assert not overlap(spans["large 1"], spans["large 2"])


def test_small_requests_use_every_compute_slot(slots):
    spans = run_together([("small 1", False), ("small 2", False)])
    assert overlap(spans["small 1"], spans["small 2"])


def test_what_is_large():
    config = evmamba.build_model("tiny").config
    assert jobs.pass_factor(config, 224) == pytest.approx(1.0)
    assert jobs.is_large(config, 224)  # a full-size image
    assert not jobs.is_large(config, 32)  # a study model's task image
    assert jobs.pass_factor(config, 32) == pytest.approx((32 / 224) ** 2)
