"""The trainer: one model on one dataset (a procedural task or an ImageFolder), on one process or many.

    result = train(TrainConfig(ModelConfig(scan="ss2d"), data="texture", steps=200), "runs/ss2d-texture")

AdamW (no weight decay on norms, biases and the scan's A_logs and Ds, as the authors), a linear warm-up
then a cosine schedule per step, label smoothing, mixed precision on a GPU (bf16 where supported, else fp16
with loss scaling), an optional exponential moving average of the weights (EMA), and checkpoints:

    OUT/last.pth    written every `save_every` steps and at the end: the weights in the authors' format
                    ({"model": state_dict}, plus "model_ema") and what resuming needs (optimizer,
                    schedule, step, random state, history)
    OUT/final.pth   the trained weights only, in the authors' format (evmamba.load_checkpoint and the
                    authors' code read it); "model_ema" too when EMA is on
    OUT/result.json the configuration, the test accuracy per label head, the loss history, the time

Running again with the same OUT resumes from last.pth (the data order and the random state depend only on
the seed and the step, so the resumed run ends exactly where an uninterrupted one would).

Several processes: launch with torchrun (`torchrun --nproc_per_node N -m ablations train ...`); the model
is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU), each process reads its share of every
batch (batch_size is per process), BatchNorm statistics are synchronised (SyncBatchNorm on GPU, averaged
before each evaluation and save on CPU), and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from evmamba.checks import choice, integer
from evmamba.files import atomic_write_text
from evmamba.model import ModelConfig

from .config import config_dict
from .data import build_dataset, shard_batches

AMP_MODES = ("auto", "off", "bf16", "fp16")
OMITTED_AT_DEFAULT = ("test_seed", "scan_free", "eval_every", "curve_images")


@dataclass(frozen=True)
class TrainConfig:
    # the model (its num_classes is set from the data's label heads)
    model: ModelConfig = field(default_factory=ModelConfig)
    # the data: a task name (texture, markers, ...) or an ImageFolder path
    data: str = "texture"
    val_data: str | None = None
    image_size: int = 32
    train_images: int = 4096  # procedural tasks only
    test_images: int = 1024
    # the test set's seed (procedural tasks): None draws it from the run's own seed, after its training
    # images; a fixed seed gives every run the same test images (images 0..test_images-1 of that seed)
    test_seed: int | None = None
    workers: int = 0
    # the control: every mixer's scan replaced by the identity (the scan-free network of
    # evmamba.analysis.scan_replaced_by_identity), so only the convolutions mix positions
    scan_free: bool = False
    # the optimisation
    steps: int | None = None  # total optimiser steps; or
    epochs: int | None = None  # passes over the training set (steps = epochs · batches per epoch)
    batch_size: int = 32  # per process
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float | None = 5.0
    ema_decay: float = 0.0  # 0: no EMA
    bn_batches: int = 0  # before testing, re-estimate BatchNorm statistics on this many training batches
    amp: str = "auto"  # auto: bf16/fp16 on a GPU, off on a CPU
    seed: int = 0
    # checkpoints
    save_every: int = 0  # 0: only at the end
    eval_batch_size: int = 128
    # the training curve: every eval_every steps (0: never) the test accuracy on the first curve_images
    # test images, with the running BatchNorm statistics
    eval_every: int = 0
    curve_images: int = 512

    def validate(self) -> TrainConfig:
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model must be an evmamba.ModelConfig, got {type(self.model).__name__}")
        model = self.model.validate()
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps (optimiser steps) and epochs (passes over the data)")
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                integer(getattr(self, name), name, low=1)
        for name in ("batch_size", "image_size", "train_images", "test_images", "eval_batch_size"):
            integer(getattr(self, name), name, low=1)
        if self.test_seed is not None:
            integer(self.test_seed, "test_seed", low=0)
        if not isinstance(self.scan_free, bool):
            raise ValueError(f"scan_free must be True or False, got {self.scan_free!r}")
        integer(self.curve_images, "curve_images", low=1)
        for name in ("warmup_steps", "save_every", "workers", "seed", "bn_batches", "eval_every"):
            integer(getattr(self, name), name, low=0)
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay!r}")
        choice(self.amp, "amp", AMP_MODES, plural="amp modes")
        return dataclasses.replace(self, model=model)

    def test_split(self) -> tuple[int, int]:
        """(seed, first image) of the procedural test set: the run's own seed after its training images, or
        images 0.. of test_seed."""
        if self.test_seed is None or self.test_seed == self.seed:
            return self.seed, self.train_images
        return self.test_seed, 0

    def to_dict(self) -> dict:
        """The fields as JSON-able data; those in OMITTED_AT_DEFAULT are left out at their default, so runs
        keyed before they existed keep their keys."""
        default = TrainConfig()
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in OMITTED_AT_DEFAULT or getattr(self, f.name) != getattr(default, f.name)}
        d["model"] = config_dict(self.model)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "model": ModelConfig(**d["model"])})


# ---- processes ------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), or
    run alone. GPU processes use cuda:LOCAL_RANK and nccl; CPU processes use gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return Distributed(rank, world, local_rank, dev, owns)


def _sync_buffers(model: nn.Module, ddp: Distributed):
    """Give every process rank 0's buffers (BatchNorm statistics). DistributedDataParallel does this at the
    start of every forward pass, so rank 0's are the run's; after the last step the others still hold
    their own last update."""
    if ddp.world == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, 0)


# ---- pieces ---------------------------------------------------------------------------------------------
NO_DECAY = ("A_logs", "Ds")


def parameter_groups(model: nn.Module, weight_decay: float):
    """AdamW groups: weight decay on weight matrices and kernels, none on norms, biases, A_logs and Ds."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, weight_decay: float, lr: float) -> torch.optim.AdamW:
    """AdamW over parameter_groups, as one fused kernel per step where the parameters allow it (CPU or CUDA
    floating-point tensors): on tiny's 195 tensors on a CPU, 5 ms a step against 17 ms for the loop over
    tensors, the same update up to float32 rounding."""
    groups = parameter_groups(model, weight_decay)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {}))


def learning_rate(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine from lr down to min_lr at `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, device) -> int:
    """Re-estimate every BatchNorm's running mean and variance as the plain average over `batches` (an
    iterable of (x, y)), everything else in evaluation mode (no drop-path, no randomness). After a short
    run the running averages (momentum 0.1) still remember the first steps; this makes the test use the
    statistics of the trained network. Returns the number of BatchNorm layers."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for x, _ in batches:
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


class EMA:
    """Exponential moving average of the weights (floating-point buffers too); integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module):
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(self.decay).add_(m.detach(), alpha=1 - self.decay)
            else:
                e.copy_(m)


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype for `mode` on `device`, or None for full precision (CPU runs: always None)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ValueError(f"amp={mode} needs a GPU; this run is on {device}: use amp='auto' or 'off'")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def head_losses(logits: torch.Tensor, labels: torch.Tensor, heads, smoothing: float) -> torch.Tensor:
    """Sum over label heads of the cross-entropy of that head's slice of the logits."""
    loss, start = 0.0, 0
    for h, n in enumerate(heads):
        loss = loss + F.cross_entropy(logits[:, start:start + n].float(), labels[:, h], label_smoothing=smoothing)
        start += n
    return loss


@torch.no_grad()
def evaluate(model: nn.Module, dataset, heads, *, batch_size: int, ddp: Distributed, autocast=None,
             workers: int = 0) -> dict:
    """Accuracy per head and mean loss (no smoothing) on `dataset`, each process evaluating its share."""
    model.eval()
    n = len(dataset)
    mine = list(range(ddp.rank, n, ddp.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         num_workers=workers, generator=torch.Generator())
    correct = torch.zeros(len(heads), dtype=torch.float64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(ddp.device), y.to(ddp.device)
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(x)
        start = 0
        for h, k in enumerate(heads):
            correct[h] += (logits[:, start:start + k].argmax(1) == y[:, h]).sum().item()
            start += k
        loss_sum += head_losses(logits, y, heads, 0.0).item() * x.shape[0]
    totals = torch.cat([correct, loss_sum[None]])
    if ddp.world > 1:
        dist.all_reduce(totals)
    model.train()
    return {"accuracy": (totals[:-1] / n).tolist(), "loss": (totals[-1] / n).item(), "images": n}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict, in key order: equal digests, equal weights."""
    import hashlib
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the loop -------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """Raised by a `stop` callback to end a run early (the last checkpoint stays for resuming)."""


def train(config: TrainConfig, out_dir, *, resume: bool = True, device: str | None = None, progress=None,
          bar: bool = True, stop=None) -> dict:
    """Train `config` and write OUT/last.pth, OUT/final.pth and OUT/result.json (rank 0). Returns the result.

    progress: optional callable progress(fraction, desc=...) called after every step.
    stop: optional callable stop(step) -> bool, asked after every step (and its checkpoint); True ends the
        run by raising `Interrupted`, as an interruption would (used to test resuming).
    """
    from tqdm.auto import tqdm

    from evmamba import create, save_checkpoint

    config = config.validate()
    out = Path(out_dir)
    ddp = setup_distributed(device)
    started = time.perf_counter()
    controls = contextlib.ExitStack()
    try:
        train_set = build_dataset(config.data, split="train", size=config.image_size, seed=config.seed,
                                  count=config.train_images)
        test_seed, test_start = config.test_split()
        test_set = build_dataset(config.data, split="test", size=config.image_size, seed=test_seed,
                                 count=config.test_images, start=test_start, val_data=config.val_data)
        heads = tuple(train_set.heads)
        if tuple(test_set.heads) != heads:
            raise ValueError(f"the training data has {heads} classes but the evaluation data {tuple(test_set.heads)}")
        batches_per_epoch = len(train_set) // (config.batch_size * ddp.world)
        if batches_per_epoch < 1:
            raise ValueError(f"{len(train_set)} training images make no batch of {config.batch_size} x "
                             f"{ddp.world} processes: lower batch_size or add images")
        total = config.steps or config.epochs * batches_per_epoch

        torch.manual_seed(config.seed)  # the initial weights, and the random state stochastic depth draws from
        model = create(dataclasses.replace(config.model, num_classes=sum(heads))).to(ddp.device)
        if ddp.world > 1 and ddp.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        optimizer = adamw(model, config.weight_decay, config.lr)
        dtype = amp_dtype(config.amp, ddp.device)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else None

        step, history, curve, before = 0, [], [], 0.0  # before: seconds spent in earlier sessions of the run
        last = out / "last.pth"
        if resume and last.exists():
            state = torch.load(last, map_location="cpu", weights_only=True)
            if state.get("train_config") != config.to_dict():
                raise ValueError(f"{last} was written by a different configuration; use another output folder "
                                 "or pass resume=False (--no-resume) to start again")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.module.load_state_dict(state["model_ema"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            step, history, curve = int(state["step"]), list(state["history"]), list(state.get("curve", []))
            before = float(state.get("seconds", 0.0))
            _set_rng_state(state["rng"])
        net = model
        if ddp.world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None)

        def save_state(path_step: int):
            _sync_buffers(model, ddp)
            if ddp.main:
                extra = {"optimizer": optimizer.state_dict(), "step": path_step, "history": history, "curve": curve,
                         "rng": _rng_state(), "train_config": config.to_dict(),
                         "seconds": before + time.perf_counter() - started}
                if ema is not None:
                    extra["model_ema"] = ema.module.state_dict()
                if scaler is not None:
                    extra["scaler"] = scaler.state_dict()
                save_checkpoint(model, last, extra=extra)
            ddp.barrier()

        curve_set = torch.utils.data.Subset(test_set, range(min(config.curve_images, len(test_set))))
        desc = f"{config.model.variant} {'scan-free' if config.scan_free else config.model.scan} {config.data} " \
               f"seed {config.seed}"
        net.train()
        if config.scan_free:  # for the rest of the run: training, BatchNorm statistics, tests
            from evmamba.analysis.interventions import scan_replaced_by_identity
            controls.enter_context(scan_replaced_by_identity(model))
        with tqdm(total=total, initial=step, desc=desc, leave=False, disable=not (bar and ddp.main)) as pbar:
            while step < total:
                epoch, offset = divmod(step, batches_per_epoch)
                train_set.set_epoch(epoch)
                batches = shard_batches(len(train_set), config.batch_size, config.seed, epoch, ddp.rank, ddp.world)
                # its own generator: making a loader must not draw from the global random state that
                # drop-path uses (a resumed run makes one more loader than an uninterrupted one)
                loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches[offset:],
                                                     num_workers=config.workers,
                                                     pin_memory=ddp.device.type == "cuda",
                                                     generator=torch.Generator().manual_seed(config.seed))
                for x, y in loader:
                    x, y = x.to(ddp.device, non_blocking=True), y.to(ddp.device, non_blocking=True)
                    lr = learning_rate(step, total, config.lr, config.min_lr, config.warmup_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with autocast() if autocast else contextlib.nullcontext():
                        logits = net(x)
                    loss = head_losses(logits, y, heads, config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if config.clip_grad:
                        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    history.append([step, round(loss.item(), 5), lr])
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{loss.item():.3f}")
                    if progress is not None:
                        progress(step / total, desc=desc)
                    if config.eval_every and step % config.eval_every == 0:
                        point = evaluate(model, curve_set, heads, batch_size=config.eval_batch_size, ddp=ddp,
                                         autocast=autocast, workers=config.workers)
                        curve.append([step, *(round(a, 5) for a in point["accuracy"])])
                    if config.save_every and step % config.save_every == 0 and step < total:
                        save_state(step)
                    if stop is not None and stop(step):
                        raise Interrupted(f"stopped after step {step}")
                    if step >= total:
                        break

        if config.bn_batches:
            extra_epoch = 1_000_003  # a data order of its own, the same on every run
            batches = shard_batches(len(train_set), config.batch_size, config.seed, extra_epoch, ddp.rank,
                                    ddp.world)[:config.bn_batches]
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=config.workers,
                                                 generator=torch.Generator())
            recalibrate_batchnorm(model, loader, ddp.device)
            if ema is not None:
                recalibrate_batchnorm(ema.module, loader, ddp.device)
        save_state(step)
        metrics = evaluate(model, test_set, heads, batch_size=config.eval_batch_size,
                           ddp=ddp, autocast=autocast, workers=config.workers)
        ema_metrics = None
        if ema is not None:
            ema_metrics = evaluate(ema.module, test_set, heads, batch_size=config.eval_batch_size, ddp=ddp,
                                   autocast=autocast, workers=config.workers)
        result = {
            "config": config.to_dict(),
            "heads": list(heads),
            "head_names": list(getattr(train_set, "head_names", ("class",))),
            "train_data": train_set.describe(),
            "test_data": test_set.describe(),
            "steps": total,
            "processes": ddp.world,
            "device": str(ddp.device),
            "amp": str(dtype).replace("torch.", "") if dtype else "off",
            "test": metrics,
            "test_ema": ema_metrics,
            "final_loss": history[-1][1] if history else None,
            "history": history,
            "curve": curve,
            "seconds": before + time.perf_counter() - started,  # every session of the run, not only the last
            "weights_sha256": weights_digest(model),
            "checkpoint": str(out / "final.pth"),
        }
        if ddp.main:
            extra = {"model_ema": ema.module.state_dict()} if ema is not None else None
            save_checkpoint(model, out / "final.pth", extra=extra)
            atomic_write_text(out / "result.json", json.dumps(result, indent=1))
        ddp.barrier()
        return result
    finally:
        controls.close()
        if ddp.owns_group:
            dist.destroy_process_group()


__all__ = ["AMP_MODES", "EMA", "Interrupted", "TrainConfig", "evaluate", "learning_rate", "parameter_groups",
           "recalibrate_batchnorm", "setup_distributed", "train", "weights_digest"]
