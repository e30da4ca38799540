"""What one request may cost, and how it stops: a cost budget checked before any work, a time limit, and
cancelling, with a bounded number of requests computing at once.

Every analysis request runs as a `Job` in a worker thread. Its progress callback (what the analyses call
after each batch, route or captum pass) also checks whether the job was cancelled (its client went away or
pressed stop) or ran past the time limit, and if so raises `Stopped`: the computation ends at its next
step, and the compute slot it held is free again. A cancelled request keeps its slot until then, so
submitting and cancelling cannot start more computations than there are slots.

A request on a full-size image (`is_large`) also takes one of SETTINGS.large_slots, so its peak memory is
not stacked on another's.

`estimate` gives a request's cost in seconds of this server's CPU (measured once, per model kind, at the
first request), and `check_budget` refuses a request above SETTINGS.max_cost before it starts, naming what
to reduce.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass, field

from evmamba.routes import scan_routes

from . import memory
from .settings import SETTINGS


class Stopped(Exception):
    """A job ended early: cancelled, or past its time limit (the message says which)."""


@dataclass(eq=False)  # jobs are told apart by identity (kept in a set while they run)
class Job:
    progress: object = None  # gr.Progress, or any progress(fraction, desc=...) callable
    time_limit: float = 0.0
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    ticks: int = 0

    def check(self):
        if self.cancelled.is_set():
            raise Stopped("the request was cancelled")
        if self.time_limit and time.monotonic() - self.started > self.time_limit:
            raise Stopped(f"the request ran past this server's time limit of {self.time_limit:.0f} s and was "
                          "stopped: choose a smaller model, fewer images or fewer methods")

    def __call__(self, fraction, desc=None):
        """The progress callback the analyses receive."""
        self.ticks += 1
        self.check()
        if self.progress is not None:
            self.progress(fraction, desc=desc)


_SLOTS: dict = {}  # "all" -> compute slots, "large" -> those large requests may take
_SLOTS_LOCK = threading.Lock()


def _slots(kind: str = "all") -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        if kind not in _SLOTS:
            n = SETTINGS.compute_slots if kind == "all" else min(SETTINGS.large_slots, SETTINGS.compute_slots)
            _SLOTS[kind] = threading.BoundedSemaphore(max(1, n))
        return _SLOTS[kind]


def reset_slots():
    """Forget the compute slots (after the settings changed)."""
    with _SLOTS_LOCK:
        _SLOTS.clear()


_RUNNING: set = set()  # the jobs computing now (cancelled ones included until they stop)
_RUNNING_LOCK = threading.Lock()


def running() -> int:
    """How many jobs are computing now (a cancelled one counts until it has stopped)."""
    with _RUNNING_LOCK:
        return len(_RUNNING)


def _acquire(job: Job, slots: threading.BoundedSemaphore):
    while not slots.acquire(timeout=0.25):
        job.check()  # a request cancelled while it waits never starts


def _in_a_slot(job: Job, large: bool, fn, args, kwargs):
    # a large request first waits for a large slot, holding no compute slot meanwhile (small requests go
    # on beside the large one computing); both are always taken in this order, so none waits on another
    held = [_slots("large")] if large else []
    held.append(_slots())
    taken = []
    try:
        for slots in held:
            _acquire(job, slots)
            taken.append(slots)
        job.check()
        with _RUNNING_LOCK:
            _RUNNING.add(job)
        try:
            return fn(*args, progress=job, **kwargs)
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(job)
    finally:
        for slots in reversed(taken):
            slots.release()
        memory.trim()  # what the request allocated goes back to the system


async def run(fn, *args, progress=None, large: bool = False, **kwargs):
    """fn(*args, progress=job, **kwargs) in a worker thread, within a compute slot (and one of the large
    slots when `large`: see is_large) and the time limit; when the awaiting request is cancelled, the job is
    told and stops at its next progress step."""
    job = Job(progress, SETTINGS.time_limit)
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(None, context.run, _in_a_slot, job, large, fn, args,
                                                        kwargs)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise


# ---- the cost of a request ---------------------------------------------------------------------------------
# Relative cost of one forward+backward pass at 224², from the FLOPs of the released designs (tiny 0.81,
# small 1.34, base 4.00 G), times the tokens the scan reads per position of stage 1's 56x56 map (the
# measured ratio of SS2D to ES2D on a CPU is about 4x: four times the tokens; any other family likewise).
VARIANT_FACTOR = {"tiny": 1.0, "small": 1.67, "base": 4.95}
_UNIT: dict = {}  # device -> seconds of one tiny ES2D forward+backward at 224², measured once


def unit_seconds(device: str) -> float:
    """Seconds this server takes for one forward+backward pass of tiny ES2D at 224², measured once."""
    if device not in _UNIT:
        import torch

        from evmamba import build_model
        model = build_model("tiny", seed=0).eval().to(device)
        x = torch.randn(1, 3, 224, 224, device=device, requires_grad=True)
        model(x).sum().backward()  # warm-up
        t = time.perf_counter()
        model(x).sum().backward()
        _UNIT[device] = max(time.perf_counter() - t, 1e-3)
    return _UNIT[device]


def pass_factor(config, size: int = 224) -> float:
    """One forward+backward pass of `config` at size², relative to tiny ES2D's at 224²."""
    tokens = scan_routes(config.scan, 56, 56, config.step).tokens_read / 56 ** 2  # 1 for ES2D, 4 for SS2D
    return VARIANT_FACTOR.get(config.variant, 5.0) * tokens * (size / 224) ** 2


def passes_cost(config, passes: float, size: int = 224) -> float:
    """Estimated seconds of `passes` forward+backward passes of `config` at size² on this server."""
    return passes * pass_factor(config, size) * unit_seconds(SETTINGS.device)


# A request whose passes are at least this large (tiny ES2D at 224² is 1) holds the activations of a
# full-size image: at most SETTINGS.large_slots of them compute at once, so two of them do not stack their
# peak memory (on a CPU they would share its cores anyway); small ones (a study model at 32², a partition,
# a table) go on beside them.
LARGE_PASS = 0.5


def is_large(config, size: int = 224) -> bool:
    """Whether a request on `config` at size² takes a large slot (see LARGE_PASS)."""
    return pass_factor(config, size) >= LARGE_PASS


def check_budget(seconds: float, what: str, reduce: str):
    """Refuse (ValueError) a request estimated above SETTINGS.max_cost, before any work."""
    if SETTINGS.max_cost and seconds > SETTINGS.max_cost:
        raise ValueError(f"this {what} would take about {seconds:.0f} s on this server, more than the "
                         f"{SETTINGS.max_cost:.0f} s it allows per request: {reduce}")


__all__ = ["LARGE_PASS", "Job", "Stopped", "check_budget", "is_large", "pass_factor", "passes_cost", "reset_slots",
           "run", "running", "unit_seconds"]
