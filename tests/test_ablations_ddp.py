"""DistributedDataParallel with two CPU processes on gloo: both ranks end with the same weights, the one
rank 0 saves, and the run resumes like a single-process one."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from evmamba import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, config: dict, results: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ablations.train import TrainConfig, train
    result = train(TrainConfig(**config), out, device="cpu", bar=False)
    Path(results, f"rank{rank}.json").write_text(json.dumps(
        {"digest": result["weights_sha256"], "test": result["test"], "processes": result["processes"],
         "history": result["history"]}))


CONFIG = dict(model=ModelConfig(backend="torch", drop_path=0.1), data="texture+markers", image_size=32,
              train_images=64, test_images=16, batch_size=4, steps=3, lr=1e-3)


def test_two_processes_end_with_identical_weights(tmp_path):
    world, port = 2, _free_port()
    mp.start_processes(_rank, args=(world, port, str(tmp_path / "run"), CONFIG, str(tmp_path)), nprocs=world,
                       join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert ranks[0]["processes"] == ranks[1]["processes"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]  # parameters and BatchNorm statistics
    assert ranks[0]["test"] == ranks[1]["test"] and ranks[0]["test"]["images"] == 16  # the whole test set, shared
    saved = torch.load(tmp_path / "run" / "final.pth", weights_only=True)["model"]

    import evmamba
    from ablations.train import weights_digest
    model = evmamba.build_model("tiny", num_classes=6)
    model.load_state_dict(saved)
    assert weights_digest(model) == ranks[0]["digest"]  # what rank 0 wrote is what both hold


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_torchrun_command_line(tmp_path):
    """The documented launch: torchrun --nproc_per_node 2 -m ablations train ... (gloo on CPU)."""
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "ablations", "train", "--data", "texture", "--image-size", "32",
           "--train-images", "32", "--test-images", "8", "--batch-size", "2", "--steps", "2", "--backend", "torch",
           "--device", "cpu", "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 2
