"""Pretrained weights by Hub name, offline: a local stand-in for the Hub serves checkpoints made here, through
huggingface_hub's real download and cache code; unreachable Hubs fail fast with one clear sentence.
Also the ImageNet-1K class names and the evaluation preprocessing that pretrained models come with."""
import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

import evmamba
from evmamba import CheckpointError, build_model, hub, load_checkpoint, read_checkpoint
from evmamba.imagenet import IMAGENET_MEAN, IMAGENET_STD, class_descriptions, class_names, preprocess, synset_ids, top_k

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


# ---- a stand-in for the Hub on localhost ----------------------------------------------------------
class FakeHub:
    """Serves repositories {repo_id: {filename: bytes}} with the Hub's file-list and download routes."""

    def __init__(self):
        self.repos = {}
        self.requests = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head):
                path = unquote(self.path.split("?")[0])
                hub_.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    if repo not in hub_.repos:
                        return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                    if len(parts) > 4 and parts[4] == "revision" and parts[5] not in ("main", COMMIT):
                        return self._send(404, b'{"error": "no revision"}', {"X-Error-Code": "RevisionNotFound"},
                                          head)
                    body = json.dumps({"id": repo, "sha": COMMIT,
                                       "siblings": [{"rfilename": f} for f in hub_.repos[repo]]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                    if repo not in hub_.repos:
                        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                    if filename not in hub_.repos[repo]:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    body = hub_.repos[repo][filename]
                    etag = hashlib.sha256(body).hexdigest()
                    return self._send(200, body, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT}, head)
                return self._send(404, b"", {}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client hanging up early is not news
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def pth_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


@pytest.fixture(scope="module")
def tiny_sd(official_weights):
    return official_weights("tiny", 2)


@pytest.fixture(scope="module")
def ema_sd(tiny_sd):
    return {k: v * 1.01 if v.is_floating_point() else v for k, v in tiny_sd.items()}


@pytest.fixture(scope="module")
def expected(tiny_sd, ema_sd):
    out = {}
    for name, sd in (("plain", tiny_sd), ("ema", ema_sd)):
        model = build_model("tiny")
        model.load_state_dict(sd)
        out[name] = logits(model)
    assert not torch.allclose(out["plain"], out["ema"])  # so the tests can tell which file was loaded
    return out


@pytest.fixture(scope="module")
def fake_hub(tiny_sd, ema_sd):
    fake = FakeHub()
    ckpt = pth_bytes({"model": tiny_sd, "epoch": 300})
    fake.repos["TerryPei/EfficientVMamba-Tiny"] = {"README.md": b"# weights", "efficientvmamba_tiny.pth": ckpt}
    fake.repos["lab/tiny"] = {
        "README.md": b"# weights",
        "config.json": b"{}",
        "checkpoints/efficientvmamba_tiny_ema.pth": pth_bytes({"model": ema_sd}),
        "efficientvmamba_tiny_ema.pth": pth_bytes({"model": ema_sd}),
        "optimizer.pt": pth_bytes({"state": {}}),
        "efficientvmamba_tiny.pth": ckpt,
    }
    fake.repos["lab/empty"] = {"README.md": b"nothing here"}
    yield fake
    fake.close()


@pytest.fixture
def online(fake_hub, tmp_path, monkeypatch):
    """HF_ENDPOINT at the stand-in Hub, an empty cache of this test's own."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_hub.requests.clear()
    return fake_hub


def go_offline(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")


# ---- names and the choice of file -----------------------------------------------------------------
@pytest.mark.parametrize("name, repo, filename, revision", [
    ("hf:TerryPei/EfficientVMamba-Tiny", "TerryPei/EfficientVMamba-Tiny", None, None),
    ("hf://TerryPei/EfficientVMamba-Tiny/", "TerryPei/EfficientVMamba-Tiny", None, None),
    ("hf:lab/tiny/model.pth", "lab/tiny", "model.pth", None),
    ("hf:lab/tiny/checkpoints/ep300/model.safetensors", "lab/tiny", "checkpoints/ep300/model.safetensors", None),
    ("hf:lab/tiny@v1.0/model.pth", "lab/tiny", "model.pth", "v1.0"),
    (f"hf:lab/tiny@{COMMIT}", "lab/tiny", None, COMMIT),
])
def test_hub_names_parse(name, repo, filename, revision):
    parsed = hub.parse_hub_name(name)
    assert (parsed.repo_id, parsed.filename, parsed.revision) == (repo, filename, revision)
    assert hub.parse_hub_name(str(parsed)) == parsed


@pytest.mark.parametrize("name", ["hf:", "hf:lab", "hf:/tiny", "hf:lab//model.pth", "hf:lab/tiny@/model.pth"])
def test_bad_hub_names_say_how_to_write_one(name):
    with pytest.raises(ValueError, match="hf:OWNER/REPO"):
        hub.parse_hub_name(name)


def test_checkpoint_choice_is_deterministic_and_prefers_plain_weights():
    files = ["README.md", "model_ema.pth", "optimizer.pt", "sub/model.pth", "model.ckpt", "model.pth",
             "model.safetensors", "EMA/model.safetensors", "scheduler.bin", "schema.pth"]
    choices = set()
    for seed in range(5):
        shuffled = list(np.random.default_rng(seed).permutation(files))
        choices.add(hub.pick_checkpoint(shuffled)[0])
    assert choices == {"model.safetensors"}
    assert hub.pick_checkpoint(["model_ema.pth", "model.pth", "optimizer.pt"])[0] == "model.pth"
    assert hub.pick_checkpoint(["ema/model.pth", "optimizer.pth", "a/b/model.pt"])[0] == "a/b/model.pt"
    assert hub.pick_checkpoint(["a/model.pth", "model.pth"])[0] == "model.pth"
    assert hub.pick_checkpoint(["schema.pth", "x_ema.pth"])[0] == "schema.pth"  # "ema" as a word only
    only, why = hub.pick_checkpoint(["README.md", "w.bin"])
    assert only == "w.bin" and "only checkpoint" in why
    with pytest.raises(CheckpointError, match="no checkpoint file.*README.md"):
        hub.pick_checkpoint(["README.md", "config.json"])


# ---- through huggingface_hub's download and cache -------------------------------------------------
def test_repository_name_downloads_the_checkpoint_and_loads_it_strictly(online, expected, caplog):
    model = build_model("tiny")
    with caplog.at_level(logging.INFO, logger="evmamba"):
        report = load_checkpoint(model, "hf:TerryPei/EfficientVMamba-Tiny")
    assert report.ok
    assert torch.equal(logits(model), expected["plain"])
    ckpt = report.checkpoint
    assert ckpt.source == "hf:TerryPei/EfficientVMamba-Tiny/efficientvmamba_tiny.pth"
    assert ckpt.wrapper_key == "model"
    assert any("using efficientvmamba_tiny.pth, the repository's only checkpoint file" in n for n in ckpt.notes)
    assert "efficientvmamba_tiny.pth" in caplog.text
    # the file came through the download route and sits in the huggingface_hub cache
    assert ("GET", "/TerryPei/EfficientVMamba-Tiny/resolve/main/efficientvmamba_tiny.pth") in online.requests
    cached = list(Path(os.environ["HF_HUB_CACHE"]).rglob("efficientvmamba_tiny.pth"))
    assert cached and cached[0].stat().st_size > 1_000_000


def test_among_several_files_the_plain_checkpoint_is_chosen_and_named(online, expected, caplog):
    model = build_model("tiny")
    with caplog.at_level(logging.WARNING, logger="evmamba"):
        report = load_checkpoint(model, "hf:lab/tiny")
    assert torch.equal(logits(model), expected["plain"])
    assert report.checkpoint.source == "hf:lab/tiny/efficientvmamba_tiny.pth"
    note = report.checkpoint.notes[0]
    assert "using efficientvmamba_tiny.pth among 4 checkpoint files" in note
    assert "efficientvmamba_tiny_ema.pth" in note and "hf:OWNER/REPO/FILE" in note
    assert "among 4 checkpoint files" in caplog.text  # a choice among several is announced as a warning
    # only the chosen file was downloaded
    downloads = [p for m, p in online.requests if m == "GET" and "/resolve/" in p]
    assert downloads == ["/lab/tiny/resolve/main/efficientvmamba_tiny.pth"]


def test_a_named_file_and_revision_are_used(online, expected):
    model = build_model("tiny")
    load_checkpoint(model, "hf:lab/tiny/checkpoints/efficientvmamba_tiny_ema.pth")
    assert torch.equal(logits(model), expected["ema"])
    model = build_model("tiny")
    report = load_checkpoint(model, f"hf:lab/tiny@{COMMIT}/efficientvmamba_tiny.pth")
    assert torch.equal(logits(model), expected["plain"])
    assert report.checkpoint.source == f"hf:lab/tiny@{COMMIT}/efficientvmamba_tiny.pth"


def test_hub_names_work_wherever_paths_do(online, expected):
    assert evmamba.describe_checkpoint("hf:lab/tiny")["variant"] == "tiny"
    model = evmamba.model_from_checkpoint("hf:lab/tiny")
    assert torch.equal(logits(model), expected["plain"])


def test_hub_weights_that_do_not_fit_fail_like_local_ones(online):
    with pytest.raises(evmamba.CheckpointMismatchError, match="hf:lab/tiny/efficientvmamba_tiny.pth does not fit"):
        load_checkpoint(build_model("tiny", num_classes=10), "hf:lab/tiny")


@pytest.mark.parametrize("name, message", [
    ("hf:lab/nope", "no repository lab/nope"),
    ("hf:lab/tiny/missing.pth", "no file 'missing.pth'.*efficientvmamba_tiny.pth"),
    ("hf:lab/tiny@v9/efficientvmamba_tiny.pth", "no revision 'v9'"),
    ("hf:lab/empty", "no checkpoint file.*README.md"),
])
def test_hub_answers_become_clear_errors(online, name, message):
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(name)


def test_download_progress_is_reported(online):
    seen = []
    found = hub.resolve("hf:lab/tiny", progress=lambda fraction, message: seen.append((fraction, message)))
    assert found.path.is_file()
    assert seen and seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_cached_checkpoint_loads_without_the_hub(online, expected, monkeypatch):
    read_checkpoint("hf:lab/tiny")  # fills the cache
    for switch_off in ("endpoint", "offline-mode"):
        if switch_off == "endpoint":
            go_offline(monkeypatch)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        online.requests.clear()
        for name in ("hf:lab/tiny", "hf:lab/tiny/efficientvmamba_tiny.pth"):
            model = build_model("tiny")
            report = load_checkpoint(model, name)
            assert torch.equal(logits(model), expected["plain"])
            assert report.checkpoint.source == "hf:lab/tiny/efficientvmamba_tiny.pth"
            assert any("could not be reached" in n and "local cache" in n for n in report.checkpoint.notes)
        assert online.requests == []


def test_pretrained_model_is_ready_for_imagenet(online, expected):
    model = build_model("tiny", pretrained=True)
    assert not model.training
    assert torch.equal(model(X), expected["plain"])
    weights = model.weights
    assert weights.class_names == tuple(class_names()) and len(weights.class_names) == 1000
    assert weights.preprocess is evmamba.preprocess and weights.task == "ImageNet-1K" and weights.trained
    image = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    assert model(weights.preprocess(image, size=64)).shape == (1, 1000)
    assert evmamba.PRETRAINED["tiny"] == "hf:TerryPei/EfficientVMamba-Tiny"


# ---- no Hub ---------------------------------------------------------------------------------------
def assert_unreachable_message(message: str, name: str):
    assert message.startswith("could not reach the Hugging Face Hub")
    assert name in message and "download" in message and "path" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


@pytest.mark.parametrize("name", ["hf:TerryPei/EfficientVMamba-Tiny", "hf:lab/tiny/model.pth"])
def test_unreachable_hub_fails_fast_with_one_sentence(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    go_offline(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("tiny"), name)
    assert time.perf_counter() - start < 5
    assert_unreachable_message(str(err.value), name)
    assert "Connection" in str(err.value) or "connect" in str(err.value).lower()


def test_offline_mode_fails_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")  # unroutable: a request would hang, not fail
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        build_model("small", pretrained=True)
    assert time.perf_counter() - start < 5
    assert_unreachable_message(str(err.value), "hf:TerryPei/EfficientVMamba-Small")


def test_a_hub_that_never_answers_times_out(tmp_path, monkeypatch):
    # A socket that accepts connections and never replies: only the timeout can end the wait.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "TIMEOUT", 0.5)
        for name in ("hf:lab/tiny", "hf:lab/tiny/model.pth"):
            start = time.perf_counter()
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(name)
            assert time.perf_counter() - start < 4
            assert_unreachable_message(str(err.value), name)
            assert "Timeout" in str(err.value)
    finally:
        silent.close()


def test_default_timeout_is_bounded():
    from huggingface_hub import constants
    assert hub.TIMEOUT is None and 0 < hub._default_timeout() == constants.HF_HUB_ETAG_TIMEOUT <= 60


def test_paths_are_never_hub_names():
    with pytest.raises(FileNotFoundError):
        read_checkpoint(Path("hf:lab/tiny"))


# ---- pretrained=True only for the released design ------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (dict(scan="ss2d"), r"scan='ss2d'.*load_checkpoint\(build_model\('tiny', scan='ss2d'\), "
                        r"'hf:TerryPei/EfficientVMamba-Tiny'\)"),
    (dict(num_classes=10), "num_classes=10.*classifier.head"),
    (dict(step=3), "step=3 changes the design"),
    (dict(stages="all-evss"), "stages="),
    (dict(gate=False, conv_branch=False), "conv_branch=False, gate=False change the design"),
])
def test_pretrained_refuses_designs_the_weights_were_not_trained_for(options, message, monkeypatch):
    monkeypatch.setattr(hub, "resolve", lambda *a, **k: pytest.fail("must refuse before any download"))
    with pytest.raises(ValueError, match=message):
        build_model("tiny", pretrained=True, **options)


def test_pretrained_must_be_a_bool():
    with pytest.raises(ValueError, match="pretrained must be True or False"):
        build_model("tiny", pretrained="yes")


# ---- ImageNet-1K names and preprocessing ----------------------------------------------------------
def test_class_names_are_the_standard_imagenet_order():
    names, ids, lemmas = class_names(), synset_ids(), class_descriptions()
    assert len(names) == len(ids) == len(lemmas) == 1000
    assert ids == sorted(ids) and len(set(ids)) == 1000 and ids[0] == "n01440764" and ids[-1] == "n15075141"
    known = {0: "tench", 1: "goldfish", 2: "great white shark", 207: "golden retriever", 281: "tabby",
             291: "lion", 340: "zebra", 409: "analog clock", 817: "sports car", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known
    assert lemmas[0] == "tench, Tinca tinca"
    assert evmamba.class_names is class_names


def test_top_k_names_the_most_probable_classes():
    z = torch.full((2, 1000), -5.0)
    z[0, 207], z[0, 281], z[1, 999] = 5.0, 4.0, 9.0
    best = top_k(z, k=2)
    assert [(c, n) for c, n, _ in best[0]] == [(207, "golden retriever"), (281, "tabby")]
    assert best[1][0][:2] == (999, "toilet tissue") and best[1][0][2] == pytest.approx(z[1].softmax(0)[999].item())
    with pytest.raises(ValueError, match="shape"):
        top_k(torch.zeros(1, 10))


def reference_transform(image: Image.Image, size: int) -> torch.Tensor:
    """The evaluation transform written out directly on the RGB image (the slow, obvious twin)."""
    w, h = image.size
    short = int(size / 0.875)
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)  # (width, height)
    image = image.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    a = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    x = torch.from_numpy(a).permute(2, 0, 1)
    return ((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]


@pytest.mark.parametrize("shape", [(256, 256), (300, 400), (400, 300), (90, 70), (64, 500)])
def test_preprocess_matches_the_reference_transform(shape):
    rgb = (np.random.default_rng(sum(shape)).random((*shape, 3)) * 255).astype(np.uint8)
    for size in (224, 64):
        out = preprocess(rgb, size=size)
        assert out.shape == (1, 3, size, size) and out.dtype == torch.float32
        assert torch.equal(out, reference_transform(Image.fromarray(rgb), size))
        assert torch.equal(preprocess(Image.fromarray(rgb), size=size), out)


def test_preprocess_known_values():
    # a 256x256 image is not resized at 224: the output is its centre, normalised
    rgb = (np.arange(256 * 256 * 3) % 251).astype(np.uint8).reshape(256, 256, 3)
    expected = (torch.from_numpy(rgb[16:240, 16:240].astype(np.float32) / 255).permute(2, 0, 1)
                - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(preprocess(rgb)[0], expected, atol=1e-6)
    # a flat colour stays flat at any size
    flat = preprocess(np.full((50, 80, 3), (255, 0, 128), dtype=np.uint8), size=64)[0]
    want = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(flat, want[:, None, None].expand(3, 64, 64), atol=1e-6)


def test_preprocess_accepts_grey_alpha_float_and_lists():
    rng = np.random.default_rng(1)
    rgb = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    base = preprocess(rgb, size=64)
    grey = rgb[..., 0]
    assert torch.equal(preprocess(grey, size=64), preprocess(np.stack([grey] * 3, -1), size=64))
    assert torch.equal(preprocess(grey[..., None], size=64), preprocess(grey, size=64))
    rgba = np.concatenate([rgb, np.zeros((70, 90, 1), np.uint8)], axis=-1)
    assert torch.equal(preprocess(rgba, size=64), base)
    assert torch.equal(preprocess(Image.fromarray(rgba), size=64), base)
    assert torch.equal(preprocess(Image.fromarray(grey), size=64), preprocess(grey, size=64))
    # a float image in [0, 1] goes the same way, without the 8-bit rounding and clamping inside the resize
    yy, xx = np.mgrid[0:70, 0:90] / 10.0
    smooth = np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy)], -1) * 0.5 + 0.5
    as_uint8 = preprocess((smooth * 255).round().astype(np.uint8), size=64)
    as_float = preprocess(smooth, size=64)
    assert (as_float - as_uint8).abs().max() < 2.5 / 255 / min(IMAGENET_STD)  # within 8-bit rounding
    batch = preprocess([rgb, Image.fromarray(rgb)], size=64)
    assert batch.shape == (2, 3, 64, 64) and torch.equal(batch[0], base[0]) and torch.equal(batch[1], base[0])


@pytest.mark.parametrize("image, message", [
    (np.zeros((3, 64, 64), np.uint8), r"\(H, W, 3\).*transpose"),
    (np.full((64, 64, 3), 255.0), r"\[0, 1\].*divide"),
    (np.zeros((64, 64, 3), np.int16), "uint8"),
    (np.zeros((0, 64, 3), np.uint8), "empty"),
    (torch.zeros(3, 64, 64), "permute"),
    ("cat.jpg", "PIL image or a numpy array"),
    ([], "empty list"),
])
def test_preprocess_errors_say_what_to_pass(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess(image)
