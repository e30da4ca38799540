"""Serving the demo to others: cancelled requests stop and change nothing, web users cannot make the server
open its files, every request has a cost budget and a time limit, progress moves, odd inputs get short
messages. The server is the test session's (tests/conftest.py), with one allowed weights folder."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

import evmamba
from webapp import jobs
from webapp.settings import MAX_GRID, SETTINGS
from webapp.weights import NOT_ALLOWED

gradio_client = pytest.importorskip("gradio_client")
handle_file = gradio_client.handle_file
AppError = pytest.importorskip("gradio_client.exceptions").AppError


def wait_until(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def erf_total(result):
    table = result[1]
    return [row[table["headers"].index("total")] for row in table["data"]]


# ---- cancelling -------------------------------------------------------------------------------------------
def test_a_cancelled_request_stops_and_the_next_result_is_the_solo_one(client, monkeypatch):
    monkeypatch.setattr(SETTINGS, "max_cost", 0)  # no budget: a busy machine's estimates must not refuse these
    solo = erf_total(client.predict(api_name="/erf"))
    job = client.submit(weights="random", sample="chelsea", methods=["Integrated Gradients", "SmoothGrad", "Saliency"],
                        api_name="/attribution")
    assert wait_until(lambda: jobs.running() > 0), "the attribution never started"
    job.cancel()
    assert wait_until(lambda: jobs.running() == 0, 60), "the cancelled attribution kept computing"
    assert erf_total(client.predict(api_name="/erf")) == solo
    # and while one computes, another on the same cached model gives the solo answer too
    other = client.submit(weights="random", sample="chelsea", methods=["Saliency"], api_name="/attribution")
    assert erf_total(client.predict(api_name="/erf")) == solo
    other.result(timeout=300)


# ---- the checkpoint boundary ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private(tmp_path_factory):
    d = tmp_path_factory.mktemp("private")
    torch.save({"api_token": "s3cr3t", "db_user": "admin", "notes": "x"}, d / "secrets.pt")
    torch.save({"model": evmamba.build_model("tiny").state_dict()}, d / "tiny.pth")
    (d / "folder.pth").mkdir()
    return d


def test_server_paths_outside_the_allowed_folders_get_one_message(client, private, weights_dir):
    for path in [private / "secrets.pt", private / "tiny.pth", private / "folder.pth", private / "missing.pth",
                 "/etc/shadow", "/etc", f"{weights_dir}/../{private.name}/tiny.pth", "~/.ssh/id_rsa"]:
        with pytest.raises(AppError) as e:
            client.predict(weights=str(path), api_name="/erf")
        assert str(e.value) == NOT_ALLOWED, path
    (weights_dir / "link.pth").symlink_to(private / "tiny.pth")  # a link out of the folder is outside it
    with pytest.raises(AppError, match=NOT_ALLOWED):
        client.predict(weights=str(weights_dir / "link.pth"), api_name="/erf")


def test_uploaded_and_allowed_checkpoints_load(client, private, weights_dir, tmp_path):
    model = evmamba.build_model("tiny", seed=7)
    evmamba.save_checkpoint(model, weights_dir / "seven.pth")
    _, _, info, _ = client.predict(weights=str(weights_dir / "seven.pth"), inputs="random", api_name="/erf")
    assert "weights from " in info and "seven.pth" in info
    evmamba.save_checkpoint(evmamba.build_model("tiny", seed=8), tmp_path / "upload.pth")
    _, _, info, _ = client.predict(weights_upload=handle_file(str(tmp_path / "upload.pth")), inputs="random",
                                   api_name="/erf")
    assert "upload.pth" in info
    # the contents of an uploaded file may be described: it is the user's own
    with pytest.raises(AppError, match="found no model weights: top-level keys are api_token"):
        client.predict(weights_upload=handle_file(str(private / "secrets.pt")), api_name="/erf")


def test_hub_names_follow_the_servers_flag(client, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub cannot be reached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(SETTINGS, "allow_hub_downloads", False)
    with pytest.raises(AppError) as e:
        client.predict(weights="hf:someone/EfficientVMamba", api_name="/erf")
    assert str(e.value) == NOT_ALLOWED
    # the authors' repositories are among the panel's choices whatever the flag
    with pytest.raises(AppError, match="could not reach the Hugging Face Hub"):
        client.predict(weights=evmamba.PRETRAINED["tiny"], api_name="/erf")
    monkeypatch.setattr(SETTINGS, "allow_hub_downloads", True)
    with pytest.raises(AppError, match="could not reach the Hugging Face Hub to fetch hf:someone/EfficientVMamba"):
        client.predict(weights="hf:someone/EfficientVMamba", api_name="/erf")


# ---- cost and time ------------------------------------------------------------------------------------------
def test_a_request_over_budget_is_refused_before_it_starts(client, monkeypatch):
    from webapp import models
    monkeypatch.setattr(SETTINGS, "max_cost", 5.0)
    started = []
    monkeypatch.setattr(jobs, "_in_a_slot", lambda *a: started.append(a))
    monkeypatch.setattr(models, "build", lambda *a, **k: started.append(a))  # not even the model is built
    with pytest.raises(AppError, match=r"this attribution would take about \d+ s on this server, more than the 5 s "
                                       r"it allows per request: choose fewer methods"):
        client.predict(weights="random", variant="base", scan="ss2d", methods=["Integrated Gradients", "SmoothGrad"],
                       api_name="/attribution")
    with pytest.raises(AppError, match="receptive field would take about .* average over fewer images"):
        client.predict(weights="random", variant="base", inputs="natural images", count=16, api_name="/erf")
    assert started == []


def test_a_request_past_the_time_limit_stops_and_says_so(client, monkeypatch):
    monkeypatch.setattr(SETTINGS, "time_limit", 0.01)
    monkeypatch.setattr(SETTINGS, "max_cost", 0)  # the time limit is what stops it, whatever the estimate
    with pytest.raises(AppError, match="ran past this server's time limit of 0 s and was stopped"):
        client.predict(inputs="natural images", count=4, api_name="/erf")
    assert wait_until(lambda: jobs.running() == 0, 30)


def test_attribution_progress_moves():
    calls = []
    from evmamba.analysis.attribution import attributions
    attributions(evmamba.build_model("tiny", seed=0).eval(), "chelsea", image_size=64, batch_size=4, bar=False,
                 methods=("integrated_gradients", "saliency"), progress=lambda f, desc=None: calls.append(f))
    # 6 batches of 4 steps and the convergence check's 2 passes, then saliency's one
    assert len(calls) == 9 and calls == sorted(calls) and calls[-1] == 1.0 and calls[-2] < 1.0


# ---- odd inputs ------------------------------------------------------------------------------------------------
def test_a_16_bit_png_gives_the_picture_of_its_8_bit_copy(tmp_path):
    from evmamba.analysis.images import load_image
    grey = (np.arange(64 * 80).reshape(64, 80) * 13 % 65536).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "sixteen.png")
    Image.fromarray(np.round(grey / 257).astype(np.uint8)).save(tmp_path / "eight.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    np.testing.assert_array_equal(load_image(tmp_path / "sixteen.png"), load_image(tmp_path / "eight.png"))


def test_long_inputs_are_cut_in_messages(client):
    for kwargs in (dict(weights="x" * 100_000), dict(sample="y" * 100_000)):
        with pytest.raises(AppError) as e:
            client.predict(api_name="/erf" if "weights" in kwargs else "/attribution", **kwargs)
        assert len(str(e.value)) <= 300


def test_only_the_analyses_are_in_the_api(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/partition", "/erf", "/attribution", "/hidden_attention", "/ablation_table", "/measure_row"}


def test_sliders_and_handlers_agree(client, app_url):
    import requests
    config = requests.get(app_url + "config", timeout=30).json()
    sliders = {c["props"].get("label"): c["props"] for c in config["components"] if c["type"] == "slider"}
    assert sliders["grid height (56: stage 1 at 224x224)"]["maximum"] == MAX_GRID
    assert sliders["images to average over"]["maximum"] == 16
    assert client.predict(height=MAX_GRID, width=3, api_name="/partition")[3]
    with pytest.raises(AppError, match="greater than maximum value"):
        client.predict(height=MAX_GRID + 1, api_name="/partition")


def test_uploads_have_size_limits(client, tmp_path):
    image = tmp_path / "big.png"
    image.write_bytes(b"\x89PNG" + bytes(25 * 2**20))
    with pytest.raises(AppError, match="big.png is 25 MB: images up to 20 MB are read here"):
        client.predict(upload=handle_file(str(image)), api_name="/partition")
    huge = tmp_path / "huge.pth"
    with open(huge, "wb") as f:
        f.truncate(170 * 2**20)  # more than any upload the server takes (160 MB: a base checkpoint fits)
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(weights_upload=handle_file(str(huge)), api_name="/erf")
