"""The pipeline's units of work, one dataclass per kind: what it measures (its fields), the configuration
its cached result is keyed by (`key`), and the one function that computes it (`run`).

    CostItem(row)                                parameters and FLOPs (any process)
    MemoryItem(row, size, batch, device, where)  the memory of one training step
    ErfItem(row, stage, size, inputs, seed)      receptive-field area ratios at initialisation
    TrainItem(row, task, seed, config, folder, device, keep)   one training run
    SpeedItem(row, batch, repeats, device, where, threads, size)   throughput and latency (timed in the
                                                 main process, one at a time)
    ScalingItem(row, batch, repeats, device, where, threads, sizes)  time and memory against resolution

Items are plain picklable data, so worker processes run them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from evmamba.model import ModelConfig

from .config import config_dict, slug


@dataclass(frozen=True)
class Item:
    kind: ClassVar[str]
    estimate: ClassVar[int] = 1  # relative run time, to start the longest first
    row: ModelConfig

    @property
    def name(self) -> str:
        return slug(self.row)

    def key(self) -> dict:
        """The configuration the stored result is keyed by (JSON-able): the row, then every other field in
        order under its name, or under the name its metadata gives as "key" (None: not part of the key)."""
        out = {"row": config_dict(self.row)}
        for f in fields(self):
            name = f.metadata.get("key", f.name)
            if f.name != "row" and name is not None:
                value = getattr(self, f.name)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def run(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class CostItem(Item):
    kind: ClassVar[str] = "cost"

    def run(self) -> dict:
        from .measure import static_cost
        return static_cost(self.row)


@dataclass(frozen=True)
class MemoryItem(Item):
    kind: ClassVar[str] = "memory"
    estimate: ClassVar[int] = 3
    size: int = 224
    batch: int = 1
    device: str = field(default="cpu", metadata={"key": None})  # where it runs; `where` describes it in the key
    where: str = field(default="", metadata={"key": "device"})  # the device's description

    def run(self) -> dict:
        from .measure import peak_memory
        return peak_memory(self.row, self.size, self.batch, self.device)


@dataclass(frozen=True)
class ErfItem(Item):
    kind: ClassVar[str] = "erf"
    estimate: ClassVar[int] = 2
    stage: int = 1
    size: int = 224
    inputs: int = 2
    seed: int = 0

    def run(self) -> dict:
        from .measure import erf_ratios
        return erf_ratios(self.row, stage=self.stage, size=self.size, inputs=self.inputs, seed=self.seed)


@dataclass(frozen=True)
class TrainItem(Item):
    kind: ClassVar[str] = "train"
    task: str = "texture"
    seed: int = 0
    config: dict | None = None  # TrainConfig.to_dict(): what the run is keyed by
    folder: str = ""
    device: str = "cpu"
    keep: bool = False  # keep the trained weights (final.pth) after the run

    @property
    def name(self) -> str:
        return f"{slug(self.row)}-{self.task}-s{self.seed}"

    @property
    def estimate(self) -> int:
        """Relative cost: a scan reading each position R times (SS2D: 4) costs about R - 1 times ES2D."""
        from evmamba.routes import scan_routes
        return 100 * max(1, scan_routes(self.row.scan, 8, 8, self.row.step).readers - 1)

    def key(self) -> dict:
        return self.config

    def run(self) -> dict:
        from .train import TrainConfig, train
        out = Path(self.folder)
        result = train(TrainConfig.from_dict(self.config), out, resume=True, device=self.device, bar=False)
        (out / "last.pth").unlink(missing_ok=True)  # only needed to resume an unfinished run
        if not self.keep:
            (out / "final.pth").unlink(missing_ok=True)
        return result


@dataclass(frozen=True)
class TimedItem(Item):
    """Timed in the main process, one at a time: where and how it is timed is part of its key."""

    batch: int = 1
    repeats: int = 2
    device: str = field(default="cpu", metadata={"key": None})  # where it runs; `where` describes it in the key
    where: str = field(default="", metadata={"key": "device"})  # the device's description
    threads: int = 1


@dataclass(frozen=True)
class SpeedItem(TimedItem):
    kind: ClassVar[str] = "speed"
    size: int = 224

    def run(self) -> dict:
        from .measure import speed
        return speed(self.row, self.size, self.batch, self.repeats, self.device)


@dataclass(frozen=True)
class ScalingItem(TimedItem):
    kind: ClassVar[str] = "scaling"
    sizes: tuple = ()

    def run(self) -> list:
        from .measure import scaling
        return scaling(self.row, self.sizes, batch=self.batch, repeats=self.repeats, device=self.device)


def run_item(item: Item):
    """Run one item (in a worker process or inline); its JSON-able result."""
    return item.run()


def init_worker(threads: int):
    """What a process running items sets up first: its torch threads, and no UserWarnings."""
    import warnings

    import torch
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning)


def run_items(items, finish, *, jobs: int = 1, threads: int = 1):
    """Run `items` in this process (jobs <= 1; torch threads restored afterwards) or in `jobs` spawned
    worker processes of `threads` threads each, calling finish(item, result, error) as each ends: error
    None, or a one-line description of the exception (the item's failure does not stop the others)."""
    import multiprocessing
    import traceback
    from concurrent.futures import ProcessPoolExecutor, as_completed
    if jobs <= 1:
        import torch
        before = torch.get_num_threads()
        init_worker(threads)
        try:
            for item in items:
                try:
                    finish(item, run_item(item))
                except Exception as e:  # noqa: BLE001 - reported with the item's name
                    finish(item, None, f"{type(e).__name__}: {e}")
        finally:
            torch.set_num_threads(before)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_item, item): item for item in items}
        for f in as_completed(futures):
            try:
                finish(futures[f], f.result())
            except Exception as e:  # noqa: BLE001 - reported with the item's name
                finish(futures[f], None, "".join(traceback.format_exception_only(type(e), e)).strip())


__all__ = ["CostItem", "ErfItem", "Item", "MemoryItem", "ScalingItem", "SpeedItem", "TimedItem", "TrainItem",
           "init_worker", "run_item", "run_items"]
