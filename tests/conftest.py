import os
import sys
from pathlib import Path

import pytest
import torch

from evmamba.agreement import rel_err  # the relative error the tests use (test modules import it from here)

# Under pytest-xdist each worker, and every process it starts (notebook kernels, torchrun workers), gets its
# share of the cores: OpenMP threads beyond the free cores spin against each other (a notebook ran 7x slower)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)

# the task images the tests draw go to a cache of this session's own (a cold cache, as on a new machine)
os.environ["EVMAMBA_IMAGE_CACHE"] = __import__("tempfile").mkdtemp(prefix="evmamba-task-images-")

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def manifest_path():
    return lambda variant: DATA / f"official_state_dict_{variant}.txt"


@pytest.fixture(scope="session")
def official_weights(manifest_path):
    """Deterministic, well-scaled weights with the official keys (the parity cases use seed 2)."""
    from parity_weights import make_state_dict
    cache = {}

    def get(variant="tiny", seed=2):
        if (variant, seed) not in cache:
            cache[variant, seed] = make_state_dict(manifest_path(variant), seed=seed)
        return cache[variant, seed]
    return get


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    """The folder the test server allows web users to load checkpoints from (--weights-dir)."""
    return tmp_path_factory.mktemp("allowed-weights")


@pytest.fixture(scope="session")
def app_url(weights_dir):
    """The browser demo served once for the session, on a free local port."""
    import socket
    sys.path.insert(0, str(Path(__file__).parent.parent))
    import app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = app.parse_args(["--device", "cpu", "--port", str(port), "--weights-dir", str(weights_dir)])
    app.configure(args)
    demo = app.build_demo()
    app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    """A gradio_client Client of the test server (skips when gradio_client is not installed)."""
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(app_url, verbose=False)


__all__ = ["rel_err"]
