"""The browser demo's API: every named endpoint with its defaults, bad inputs that must become messages,
and a server that still answers afterwards."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
handle_file = gradio_client.handle_file
AppError = pytest.importorskip("gradio_client.exceptions").AppError


def plotly_traces(plot):
    assert plot["type"] == "plotly", plot.get("type")
    return json.loads(plot["plot"])["data"]


def assert_picture(plot):
    assert plot["type"] in ("matplotlib", "plotly")
    assert plot["plot"]


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/partition", "/erf", "/attribution", "/hidden_attention", "/ablation_table", "/measure_row"} <= names


def test_partition_defaults(client):
    main, regrouped, comparison, info = client.predict(api_name="/partition")
    traces = plotly_traces(main)
    routes = {t["meta"]["route"] for t in traces if isinstance(t.get("meta"), dict) and "route" in t["meta"]}
    assert routes == {0, 1, 2, 3}
    assert plotly_traces(regrouped) and plotly_traces(comparison)
    assert "ES2D on a 8x8 grid with step 2: 4 routes of 16 tokens, 64 tokens read (SS2D reads 256)" in info


def test_partition_odd_grid_notes_the_padding(client):
    *_, info = client.predict(scan="ES2D", height=7, width=9, step=3, api_name="/partition")
    assert "padded to 9x9" in info and "9 routes of 9 tokens" in info


def test_erf_defaults_are_the_trained_model_on_its_task_images(client):
    fig, table, info, picker = client.predict(api_name="/erf")
    assert_picture(fig)
    assert [str(r) for r in (row[0] for row in table["data"])] == ["all", "0", "1", "2", "3"]
    assert any("area ratio 0.99" in h for h in table["headers"])
    assert "weights from study:markers, trained on the markers task" in info and "output grid 8x8" in info
    assert picker  # the picture to pick a position on


def test_erf_with_random_weights(client):
    _, table, info, _ = client.predict(weights="random", inputs="random", count=1, api_name="/erf")
    assert "random weights (seed 0)" in info and "output grid 56x56" in info and len(table["data"]) == 5


def test_study_weights_carry_their_design(client):
    with pytest.raises(AppError, match=r"study:markers-ss2d was trained as another design: scan='es2d' "
                                       r"\(weights: 'ss2d'\); set those in the model settings"):
        client.predict(weights="study:markers-ss2d", api_name="/erf")
    _, _, info, _ = client.predict(weights="study:markers-ss2d", scan="ss2d", level="mixer", api_name="/erf")
    assert "scan SS2D" in info and "study:markers-ss2d" in info
    with pytest.raises(AppError, match="task images are the test images of a study model's task"):
        client.predict(weights="random", inputs="task images", api_name="/erf")


@pytest.mark.parametrize("api", ["/erf", "/attribution", "/hidden_attention"])
def test_a_design_the_weights_cannot_honour_is_refused_by_name(client, api):
    """Not dropped: with the study's tiny ES2D weights, a base SS2D request is refused before any cost
    estimate (which would otherwise be made for a model that never runs)."""
    with pytest.raises(AppError, match=r"study:markers was trained as another design: variant='base' \(weights: "
                                       r"'tiny'\), scan='ss2d' \(weights: 'es2d'\)"):
        client.predict(weights="study:markers", variant="base", scan="ss2d", api_name=api)


@pytest.fixture(scope="module")
def checkpoints(weights_dir, tmp_path_factory):
    """A tiny checkpoint in the server's allowed folder, and one to upload."""
    import evmamba
    evmamba.save_checkpoint(evmamba.build_model("tiny", seed=5), weights_dir / "defaults.pth")
    upload = tmp_path_factory.mktemp("upload") / "mine.pth"
    evmamba.save_checkpoint(evmamba.build_model("tiny", seed=6), upload)
    return {"folder": dict(weights=str(weights_dir / "defaults.pth")),
            "upload": dict(weights_upload=handle_file(str(upload)))}


@pytest.mark.parametrize("kind", ["random", "study", "folder", "upload"])
@pytest.mark.parametrize("api", ["/erf", "/attribution", "/hidden_attention"])
def test_every_model_endpoint_answers_each_weights_kind_at_its_defaults(client, checkpoints, api, kind):
    weights = {"random": dict(weights="random"), "study": {}, **checkpoints}[kind]
    info = client.predict(**weights, api_name=api)[-1 if api != "/erf" else 2]
    named = {"random": "; random weights (seed 0)", "study": "; weights from study:markers, trained on the markers",
             "folder": "; weights from defaults.pth (in ", "upload": "; weights from mine.pth\n"}[kind]
    assert named in info
    suited = {"random": "random", "study": "task images", "folder": "natural images", "upload": "natural images"}
    image = {"random": "chelsea", "study": "markers test image 0", "folder": "chelsea", "upload": "chelsea"}
    assert (f"inputs: {suited[kind]}, suited to the weights (8 averaged)" if api == "/erf"
            else f"image: {image[kind]}") in info


def test_erf_per_route_positions_for_ss2d_mixer(client):
    fig, table, info, _ = client.predict(weights="random", scan="ss2d", level="mixer", stage=1, row=3, col=5,
                                         inputs="random", api_name="/erf")
    rows = table["data"]
    assert len(rows) == 5 and all((r[2], r[3]) == (3, 5) for r in rows)


@pytest.mark.parametrize("scan", ["es2d", "ss2d", "zigzag", "windows", "hilbert", "diagonal"])
def test_every_scan_family_is_drawn_and_has_per_route_receptive_fields(client, scan):
    from evmamba.families import family
    from evmamba.routes import num_routes
    step = 3 if family(scan).param else 2
    main, regrouped, comparison, info = client.predict(scan=scan.upper(), height=7, width=9, step=step,
                                                       api_name="/partition")
    assert plotly_traces(main) and plotly_traces(comparison)
    assert f"{scan.upper()}" in info and f"{num_routes(scan, step)} routes" in info
    fig, table, info, _ = client.predict(weights="random", scan=scan, step=step, level="mixer", stage=1,
                                         inputs="random", api_name="/erf")
    assert_picture(fig)
    assert [str(row[0]) for row in table["data"]] == ["all", *map(str, range(num_routes(scan, step)))]


def test_attribution_defaults_explain_the_trained_model_on_a_task_image(client):
    top, maps, routes, table, info = client.predict(api_name="/attribution")
    assert {c["label"].split(" (")[0] for c in top["confidences"]} == {"different", "same"}
    assert_picture(maps) and assert_picture(routes)
    assert "image: markers test image 0" in info and "study:markers" in info
    assert len(table["data"]) >= 4


def test_attribution_of_random_weights_says_so(client):
    top, _, _, _, info = client.predict(weights="random", sample="chelsea", methods=["Saliency"],
                                        api_name="/attribution")
    assert len(top["confidences"]) == 5 and "random" in info.lower()


def test_hidden_attention_defaults(client):
    row_fig, matrix, info = client.predict(api_name="/hidden_attention")
    assert_picture(row_fig) and assert_picture(matrix)
    assert "layers.0.blocks.0.op: a 8x8 map; query (4, 4)" in info  # the trained model's 32x32 task image
    *_, info = client.predict(weights="random", sample="chelsea", row=28, col=28, api_name="/hidden_attention")
    assert "layers.0.blocks.0.op: a 56x56 map; query (28, 28)" in info


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights_dir):
    d = tmp_path_factory.mktemp("inputs")
    (d / "notes.txt").write_text("hello")
    (d / "fake.png").write_text("hello")
    Image.fromarray(np.full((40, 50), 128, np.uint8)).save(d / "grey.png")
    Image.fromarray(np.full((40, 50, 4), 200, np.uint8)).save(d / "rgba.png")
    Image.fromarray(np.zeros((2500, 3000, 3), np.uint8)).save(d / "huge.png")
    import evmamba
    torch.save({"model": evmamba.build_model("small").state_dict()}, weights_dir / "small.pth")
    (weights_dir / "corrupt.pth").write_bytes(b"\x80\x02 not a checkpoint")
    return d


BAD = [
    ("/partition", dict(height=0), "less than minimum value"),
    ("/partition", dict(height=4, width=4, step=6), "step 6 is larger than the 4x4 grid"),
    ("/partition", dict(upload="notes.txt"), "Invalid file type"),
    ("/partition", dict(upload="fake.png"), "cannot read fake.png as an image"),
    # checkpoints in the folder the server allows (--weights-dir): their contents may be described
    ("/erf", dict(weights="small.pth"), r"small.pth \(in .*\) holds another design \(build_model\('small'\)\): "
                                        r"variant='tiny' \(weights: 'small'\); set those in the model settings"),
    ("/erf", dict(weights="corrupt.pth"), "is not a readable PyTorch checkpoint"),
    ("/erf", dict(weights="missing.pth"), "checkpoint file not found"),
    ("/erf", dict(row=500, col=3), r"outside the 8x8 output grid"),
    ("/erf", dict(row=5), "set both the output row and column"),
    ("/attribution", dict(methods=[]), "choose at least one attribution method"),
    ("/hidden_attention", dict(route="7"), r"route must be an integer in 0..3, got 7"),
    ("/hidden_attention", dict(row=90), r"query row must be an integer in -1..7, got 90"),
    ("/ablation_table", dict(table="nope"), "Value: nope is not in the list of choices"),
    ("/ablation_table", dict(variant="base", table="stage_layout"), "no row of this table matches these filters"),
    ("/measure_row", dict(stages="sideways"), "Value: sideways is not in the list of choices"),
    ("/measure_row", dict(scan=None), "unknown scan None: valid scans are es2d, ss2d"),
]


@pytest.mark.parametrize("api,kwargs,message", BAD, ids=[f"{a}-{'-'.join(k)}" for a, k, _ in BAD])
def test_bad_inputs_give_messages_and_the_server_survives(client, files, weights_dir, api, kwargs, message):
    import re
    kwargs = {k: (handle_file(str(files / v)) if k == "upload" else
                  str(weights_dir / v) if k == "weights" else v) for k, v in kwargs.items()}
    with pytest.raises(AppError) as e:
        client.predict(api_name=api, **kwargs)
    assert re.search(message, str(e.value)), str(e.value)
    assert "Traceback" not in str(e.value)
    assert client.predict(height=4, width=4, api_name="/partition")[0]["plot"]


@pytest.mark.parametrize("name", ["grey.png", "rgba.png"])
def test_grey_and_rgba_images_work(client, files, name):
    *_, info = client.predict(upload=handle_file(str(files / name)), api_name="/partition")
    assert f"image: {name}" in info


def test_huge_images_are_downscaled_with_a_note(client, files):
    *_, info = client.predict(upload=handle_file(str(files / "huge.png")), api_name="/partition")
    assert "the image was 3000x2500 pixels and has been downscaled to 2048x1707" in info


def test_ablation_table_defaults(client):
    df, chart, info = client.predict(api_name="/ablation_table")
    assert "variant" in df["headers"] and "ImageNet top-1 (%) [paper]" in df["headers"]
    scans = {row[df["headers"].index("scan")] for row in df["data"]}
    assert scans == {"ES2D", "SS2D"} and len(df["data"]) == 24
    assert plotly_traces(chart)[0]["type"] == "bar"
    assert "reference numbers" in info


def test_ablation_table_filters(client):
    df, _, _ = client.predict(scan="SS2D", conv_branch="no", variant="tiny", api_name="/ablation_table")
    h = df["headers"]
    assert len(df["data"]) == 2 and all(r[h.index("scan")] == "SS2D" and r[h.index("conv branch")] == "no"
                                        for r in df["data"])


def test_measure_a_missing_row(client):
    df = client.predict(step=3, api_name="/measure_row")
    h = df["headers"]
    assert len(df["data"]) == 1 and df["data"][0][h.index("step p")] in (3, "3")
    assert float(df["data"][0][h.index("FLOPs (G, 224²)")]) == pytest.approx(0.82, abs=0.01)
    assert df["data"][0][h.index("accuracy")] == "not trained here"


def test_weights_field_takes_hub_names_when_the_server_allows_them(client, monkeypatch):
    # the test server listens on loopback only, where other Hub names are allowed by default
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: the Hub cannot be reached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(AppError, match="could not reach the Hugging Face Hub to fetch hf:someone/EfficientVMamba"):
        client.predict(weights="hf:someone/EfficientVMamba", api_name="/erf")


def test_several_users_at_once(client):
    jobs = [client.submit(api_name="/erf"), client.submit(level="mixer", api_name="/erf"),
            client.submit(height=6, api_name="/partition"), client.submit(api_name="/hidden_attention"),
            client.submit(scan="SS2D", api_name="/partition")]
    results = [job.result(timeout=600) for job in jobs]
    assert "output grid 8x8" in results[0][2] and "level mixer" in results[1][2]
    assert "6x8 grid" in results[2][3] and "query (4, 4)" in results[3][2] and "SS2D on a 8x8" in results[4][3]


def test_figures_leave_a_band_for_the_label_box():
    from matplotlib.figure import Figure

    from webapp.views import LABEL_BOX_INCHES, below_label
    fig = Figure(figsize=(4, 2), layout="constrained")
    ax = fig.subplots()
    ax.set_title("panel")
    fig.suptitle("a title")
    fig.draw_without_rendering()
    before = ax.get_position().y1 * 2  # inches from the bottom
    below_label(fig)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    band = fig.get_figheight() - LABEL_BOX_INCHES
    assert fig.get_figheight() == 2 + LABEL_BOX_INCHES
    assert abs(ax.get_position().y1 * fig.get_figheight() - before) < 1e-9  # the axes stays where it was
    for artist in (fig._suptitle, ax.title):
        assert artist.get_window_extent(renderer).y1 / fig.dpi <= band + 1e-6  # nothing in the band
