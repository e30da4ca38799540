"""The evmamba browser demo: how EfficientVMamba's atrous scan partitions patches, what each scan direction
sees, what the classifier looks at, and the ablation tables.

    python app.py                         # http://127.0.0.1:7860, GPU when there is one
    python app.py --device cpu --port 8080 --checkpoint efficientvmamba_tiny.pth --variant tiny

The usual Gradio environment variables (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, ...) still apply when
the matching flag is not given. Every picture and number comes from a function of `evmamba` or
`ablations`; this file only wires them to widgets and turns errors into messages.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import threading
import traceback

import gradio as gr
import numpy as np
import torch

import evmamba
from evmamba.analysis import attribution as attr_lib
from evmamba.analysis import erf as erf_lib
from evmamba.analysis import hidden_attention as att_lib
from evmamba.analysis.attribution_figures import attribution_figure, route_contribution_figure
from evmamba.analysis.erf_figures import erf_figure
from evmamba.analysis.hidden_attention_figures import attention_row_figure, hidden_attention_figure
from evmamba.analysis.images import fit_image, sample_names
from evmamba.analysis.partition_plotly import partition_plotly, regrouped_plotly, scan_comparison_plotly
from evmamba.checkpoint import CheckpointError, CheckpointMismatchError, describe_checkpoint

log = logging.getLogger("evmamba.app")

# set from the command line in main()
SETTINGS = {"device": "cpu", "checkpoint": "", "variant": "tiny", "ablations": ""}
UPLOAD = "(uploaded file)"
MAX_GRID = 128
MAX_STEP = 8
SAMPLES = sample_names()
ATTRIBUTION_METHODS = {"Integrated Gradients": "integrated_gradients", "Saliency": "saliency",
                       "Input x Gradient": "input_x_gradient", "SmoothGrad": "smoothgrad"}
_model_lock = threading.Lock()
# Analyses switch routes on and off inside the cached models, so requests that use a model run one at a time.
ONE_MODEL_AT_A_TIME = dict(concurrency_id="model", concurrency_limit=1)


# ---- errors become messages -------------------------------------------------------------------------
def shows_errors(fn):
    """Run a handler; a problem with the input becomes a visible message (gr.Error), anything unexpected
    is logged with its traceback and shown as one sentence. The server keeps running either way."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, TypeError, CheckpointError, FileNotFoundError, IndexError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        except torch.OutOfMemoryError:
            raise gr.Error("out of memory: choose a smaller model, grid or fewer images",
                           print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - the server must answer the next request
            log.error("unexpected error in %s:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"{type(e).__name__}: {e}. The server is still running: try other settings.",
                           print_exception=False) from None
    return wrapper


# ---- inputs -------------------------------------------------------------------------------------------
def pick_image(sample: str, upload) -> tuple[np.ndarray, str | None, str]:
    """(picture, note, name) from an uploaded file if there is one, else the chosen sample."""
    if upload:
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        try:
            picture, note = fit_image(path)
        except ValueError as e:  # name the file as the user knows it, not by the server's temporary path
            raise ValueError(str(e).replace(path, os.path.basename(path))) from None
        return picture, note, os.path.basename(path)
    if sample in (None, "", UPLOAD):
        raise ValueError("no image: upload one, or choose a sample image")
    if sample not in SAMPLES:
        raise ValueError(f"unknown sample image {sample!r}: choose one of {', '.join(SAMPLES)}")
    return fit_image(sample)[0], None, sample


def integer(value, name: str, low: int, high: int) -> int:
    if value is None or isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    v = int(float(value))
    if not low <= v <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {v}")
    return v


def notes(*items) -> str:
    return "\n".join(f"- {n}" for n in items if n)


# ---- models (built on demand, cached) ----------------------------------------------------------------
def model_key(variant, scan, step, conv_branch, se, checkpoint, seed):
    checkpoint = (checkpoint or "").strip()
    return (variant, scan.lower(), integer(step, "step", 1, MAX_STEP), bool(conv_branch), bool(se), checkpoint,
            integer(seed, "seed", 0, 2**31 - 1))


@functools.lru_cache(maxsize=4)
def cached_model(variant, scan, step, conv_branch, se, checkpoint, seed, device):
    if scan == "ss2d" and step != 2:
        step = 2  # the step only exists for ES2D; the SS2D model is the same for any step setting
    model = erf_lib.seeded_model(variant, seed=seed, scan=scan, step=step, conv_branch=conv_branch, se=se)
    if checkpoint:
        try:
            evmamba.load_checkpoint(model, checkpoint)
        except CheckpointMismatchError:
            try:
                fits = describe_checkpoint(checkpoint)
            except CheckpointError:
                raise CheckpointError(f"{checkpoint} is not an EfficientVMamba checkpoint: pass one of the "
                                      "authors' files or one saved by evmamba, or leave the field empty") from None
            defaults = evmamba.ModelConfig()
            switches = ", ".join(f"{k}={v}" for k, v in fits.items()
                                 if k not in ("variant", "num_classes") and v != getattr(defaults, k, None))
            raise CheckpointError(
                f"this checkpoint is for EfficientVMamba-{fits['variant']}"
                + (f" ({switches})" if switches else "")
                + f", not the {variant} model chosen: pick variant '{fits['variant']}' in the model settings "
                "(and those switches), or clear the checkpoint field for a random model") from None
    return model.to(device).eval()


def get_model(variant, scan, step, conv_branch, se, checkpoint, seed):
    key = model_key(variant, scan, step, conv_branch, se, checkpoint, seed)
    with _model_lock:
        model = cached_model(*key, SETTINGS["device"])
    trained = bool(key[5])
    what = (f"EfficientVMamba-{key[0]} {key[1].upper()}" + (f" step {key[2]}" if key[1] == "es2d" else "")
            + ("" if key[3] else ", no conv branch") + ("" if key[4] else ", no gate")
            + (f", weights from {key[5]}" if trained else f", random weights (seed {key[6]})"))
    return model, what


# ---- tab 1: skip-sampling ------------------------------------------------------------------------------
@shows_errors
def partition_view(scan="ES2D", height=8, width=8, step=2, sample="astronaut", upload=None):
    scan = scan.lower()
    height = integer(height, "grid height", 1, MAX_GRID)
    width = integer(width, "grid width", 1, MAX_GRID)
    step = integer(step, "step", 1, MAX_STEP)
    if scan == "ss2d":
        step = 2
    if scan == "es2d" and step > max(height, width):
        raise ValueError(f"step {step} is larger than the {height}x{width} grid: every sub-map would hold one "
                         f"patch or none; choose a step of at most {max(height, width)}")
    picture, note, name = pick_image(sample, upload)
    routes = evmamba.scan_routes(scan, height, width, step)
    main = partition_plotly(routes, picture, frames=40 if routes.tokens_read <= 16384 else 20)
    main.update_layout(width=None, autosize=True, margin=dict(t=130),
                       legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    regrouped = regrouped_plotly(routes, picture)
    ch, cw = min(height, 16), min(width, 16)
    comparison = scan_comparison_plotly(picture, height=ch, width=cw, step=step if scan == "es2d" else 2)
    ss2d = evmamba.scan_routes("ss2d", height, width)
    summary = notes(
        f"{scan.upper()} on a {height}x{width} grid" + (f" with step {step}" if scan == "es2d" else "")
        + f": {routes.num_routes} routes of {routes.length} tokens, {routes.tokens_read} tokens read "
        f"(SS2D reads {ss2d.tokens_read}).",
        (f"padded to {routes.padded_height}x{routes.padded_width}: the hatched patches are zeros that the scan "
         "reads and whose outputs are dropped") if routes.padded_shape != (height, width) else None,
        f"comparison drawn on a {ch}x{cw} grid so every step stays readable" if (ch, cw) != (height, width) else None,
        note, f"image: {name}")
    return main, regrouped, comparison, summary


# ---- tab 2: receptive fields ---------------------------------------------------------------------------
@shows_errors
def erf_view(variant="tiny", scan="ES2D", step=2, conv_branch=True, se=True, checkpoint="", seed=0,
             level="stage", stage=0, block=0, row=-1, col=-1, inputs="random", count=1,
             progress=gr.Progress()):
    model, what = get_model(variant, scan, step, conv_branch, se, checkpoint, seed)
    count = integer(count, "number of images", 1, 32)
    stage = integer(stage, "stage", 0, 3)
    block = integer(block, "block", 0, 8)
    row, col = integer(row, "row", -1, 4096), integer(col, "column", -1, 4096)
    if (row < 0) != (col < 0):
        raise ValueError("set both the output row and column, or both to -1 for the centre")
    position = None if row < 0 else (row, col)
    if inputs not in ("random", "natural images"):
        raise ValueError(f"inputs must be 'random' or 'natural images', got {inputs!r}")
    source = "random" if inputs == "random" else _natural(count)
    result = erf_lib.effective_receptive_fields(model, level, stage=stage, block=block, inputs=source,
                                                num_inputs=count if inputs == "random" else None,
                                                position=position, progress=progress, bar=False)
    fig = erf_figure([result])
    table = result.table().round(4)
    info = notes(what, f"level {level}: {result.module}; output grid {result.output_grid[0]}x"
                 f"{result.output_grid[1]}, position {result.requested}; click the map on the right to pick "
                 "another output position", *result.notes)
    return fig, table, info, picker_image(result), (*result.input_shape, *result.output_grid)


def picker_image(result) -> np.ndarray:
    """The combined ERF as a picture (power 0.2), upscaled to at least 224 pixels, the position marked."""
    m = result.combined.normalised("power", 0.2)
    scale = max(1, int(np.ceil(224 / max(m.shape))))
    rgb = np.repeat((np.stack([m, m ** 0.5, 0.4 + 0.6 * m], -1) * 255).astype(np.uint8), scale, 0).repeat(scale, 1)
    ih, iw = result.input_shape
    oh, ow = result.output_grid
    r, c = result.requested
    y, x = int((r + 0.5) * ih / oh * scale), int((c + 0.5) * iw / ow * scale)
    rgb[max(0, y - 1): y + 2, :] = rgb[:, max(0, x - 1): x + 2] = (255, 255, 255)
    rgb[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = (255, 0, 0)
    return rgb


def pick_position(shape, evt: gr.SelectData):
    """A click on the ERF picture -> the output position under it."""
    if not shape or evt is None or evt.index is None:
        return gr.update(), gr.update()
    ih, iw, oh, ow = shape
    scale = max(1, int(np.ceil(224 / max(ih, iw))))
    x, y = evt.index[:2]
    return min(int(y / scale * oh / ih), oh - 1), min(int(x / scale * ow / iw), ow - 1)


def _natural(count: int):
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle"] + [
        n for n in SAMPLES if n not in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")]
    return [names[i % len(names)] for i in range(count)]


# ---- tab 3: attribution ----------------------------------------------------------------------------
@shows_errors
def attribution_view(variant="tiny", scan="ES2D", step=2, conv_branch=True, se=True, checkpoint="", seed=0,
                     sample="chelsea", upload=None, target=-1, methods=("Integrated Gradients", "Saliency"),
                     progress=gr.Progress()):
    model, what = get_model(variant, scan, step, conv_branch, se, checkpoint, seed)
    picture, note, name = pick_image(sample, upload)
    chosen = [ATTRIBUTION_METHODS[m] for m in (methods or []) if m in ATTRIBUTION_METHODS]
    if not chosen:
        raise ValueError(f"choose at least one attribution method: {', '.join(ATTRIBUTION_METHODS)}")
    target = integer(target, "class", -1, model.num_classes - 1)
    prediction = attr_lib.predict(model, picture)
    top = {f"{r['name']} ({int(r['class'])})": float(r["probability"]) for _, r in prediction.classes.iterrows()}
    att = attr_lib.attributions(model, picture, target=None if target < 0 else target, methods=tuple(chosen),
                                progress=progress, bar=False)
    contributions = attr_lib.route_contributions(model, picture, target=att.target, bar=False)
    info = notes(what, prediction.note, note, f"image: {name}; attributions for class {att.target} "
                 f"({att.target_name})")
    return (top, attribution_figure(att), route_contribution_figure(contributions),
            contributions.round(4), info)


# ---- tab 4: hidden attention ---------------------------------------------------------------------------
@shows_errors
def hidden_attention_view(variant="tiny", scan="ES2D", step=2, conv_branch=True, se=True, checkpoint="", seed=0,
                          mixer=0, route="all", row=28, col=28, sample="chelsea", upload=None,
                          progress=gr.Progress()):
    model, what = get_model(variant, scan, step, conv_branch, se, checkpoint, seed)
    mixers = model.mixers()
    if not mixers:
        raise ValueError("this model has no scan mixer (all stages are inverted-residual blocks): choose a "
                         "layout with EVSS stages")
    mixer = integer(mixer, "mixer", 0, len(mixers) - 1)
    picture, note, name = pick_image(sample, upload)
    routes = None if route in (None, "", "all") else [integer(route, "route", 0, mixers[mixer][1].num_routes - 1)]
    atts = att_lib.model_hidden_attention(model, picture, mixer=mixer, routes=routes, reduce="mean",
                                          progress=progress, bar=False)
    h, w = atts[0].grid
    row, col = integer(row, "query row", 0, h - 1), integer(col, "query column", 0, w - 1)
    info = notes(what, f"{mixers[mixer][0]}: a {h}x{w} map; query ({row}, {col}); the mean of alpha over "
                 f"{atts[0].channels} channels", note, f"image: {name}")
    return attention_row_figure(atts, (row, col)), hidden_attention_figure(atts), info


# ---- tab 5: ablations ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def ablation_tables():
    from ablations.browse import load_tables
    return load_tables(SETTINGS["ablations"] or None)


def ablation_titles() -> dict:
    from ablations.config import load_grid
    return {t.name: f"**{t.title}.** {t.question}" for t in load_grid().tables.values()}


@shows_errors
def ablation_view(table="scan_fusion", variant="all", scan="all", conv_branch="all", se="all",
                  column="FLOPs (G, 224²)"):
    from ablations.browse import column_chart, filter_rows, numeric_columns
    tables = ablation_tables()
    if table not in tables:
        raise ValueError(f"no table {table!r}: tables are {', '.join(tables)}")
    df = filter_rows(tables[table], variant=variant, scan=scan, conv_branch=conv_branch, se=se)
    if df.empty:
        raise ValueError("no row of this table matches these filters: set some of them back to 'all'")
    columns = numeric_columns(df)
    note = None
    if column not in columns:
        note = f"column {column!r} has no numbers in this table; showing {columns[0]!r}" if columns else None
        column = columns[0] if columns else None
    chart = column_chart(df, column) if column else None
    info = notes(ablation_titles().get(table), f"{len(df)} rows. Columns marked [paper] or [authors' code] are the "
                 "paper's reference numbers; every other cell was measured by this project (see "
                 "assets/ablations/index.md for how, on which device and with which seeds).", note)
    return df, chart, info


@shows_errors
def measure_view(variant="tiny", scan="ES2D", step=2, conv_branch=True, se=True, stages="released", measured=None,
                 progress=gr.Progress()):
    from ablations.browse import measure_row
    row = measure_row(dict(variant=variant, scan=scan.lower(), step=integer(step, "step", 1, MAX_STEP),
                           conv_branch=bool(conv_branch), se=bool(se), stages=stages),
                      device=SETTINGS["device"], progress=progress)
    import pandas as pd
    previous = measured if isinstance(measured, pd.DataFrame) and not measured.empty else None
    table = row if previous is None else pd.concat([previous, row], ignore_index=True)
    return table, table


# ---- layout -------------------------------------------------------------------------------------------------
ABOUT = """
### What the pictures mean

**Skip-sampling.** ES2D (the paper's atrous selective scan) splits the patch grid into p×p interleaved
sub-maps and scans each once, in one direction: the scan reads each patch once (N tokens) instead of
four times (4N) as VMamba's SS2D does. Colours show which route reads each patch; the lines show the
reading order (play the animation); the regrouped view shows what each route actually scans. Grids that
do not divide by p are padded with zeros (hatched), which the scan reads and whose outputs are dropped.

**Receptive fields.** The gradient method of RepLKNet and VMamba: how much each input position
influences a chosen output position (ReLU of the output activations summed over channels, gradient
back to the input, ReLU, summed over channels, averaged over images). "All routes" is the model as it
is; each route alone keeps only that direction's scan output. Under ES2D a route only reads its own
sub-map, so its map is taken at the position of that sub-map nearest the one asked for. Area ratios:
the smallest centred square holding that share of the total contribution, as a fraction of the image.

**Attribution.** Top-5 ImageNet classes (only meaningful with trained weights), captum attributions for
one class, and how much the class logit changes when one scan direction is removed from the blocks.

**Hidden attention.** A selective scan is a linear attention whose weights come from its inputs
(alpha[t, s] = C_t · exp(Σ delta·A) · delta_s B_s): the picture is one query position's row of that
matrix, drawn back on the image, for each route.

**Ablations.** Cost (parameters, FLOPs, throughput, memory) of the design switches, receptive-field
area ratios, and accuracy on short CPU training tasks, next to the paper's reference rows.

### Cite

```bibtex
@article{pei2024efficientvmamba,
  title   = {EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba},
  author  = {Pei, Xiaohuan and Huang, Tao and Xu, Chang},
  journal = {arXiv preprint arXiv:2403.09977},
  year    = {2024}
}
```
"""


def image_inputs(default: str):
    with gr.Row():
        sample = gr.Dropdown(SAMPLES, value=default, label="sample image")
        upload = gr.File(label="or upload an image", file_types=["image"], type="filepath", height=100)
    return sample, upload


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="evmamba: EfficientVMamba explorer") as demo:
        gr.Markdown("# EfficientVMamba explorer\nAtrous selective scan (ES2D) against VMamba's four-way scan "
                    f"(SS2D). Running on **{SETTINGS['device']}**.")
        with gr.Accordion("Model (used by the receptive-field, attribution and hidden-attention tabs)", open=False):
            with gr.Row():
                variant = gr.Dropdown(list(evmamba.VARIANTS), value=SETTINGS["variant"], label="variant")
                m_scan = gr.Radio(["ES2D", "SS2D"], value="ES2D", label="scan")
                m_step = gr.Slider(1, MAX_STEP, value=2, step=1, label="ES2D step p")
                conv = gr.Checkbox(value=True, label="conv branch")
                gate = gr.Checkbox(value=True, label="channel gate")
            with gr.Row():
                checkpoint = gr.Textbox(value=SETTINGS["checkpoint"], label="checkpoint (path or hf:OWNER/REPO; "
                                        "empty: random weights)")
                seed = gr.Number(value=0, precision=0, label="seed of the random weights")
        model_inputs = [variant, m_scan, m_step, conv, gate, checkpoint, seed]

        with gr.Tabs():
            with gr.Tab("Skip-sampling"):
                with gr.Row():
                    with gr.Column(scale=1):
                        p_scan = gr.Radio(["ES2D", "SS2D"], value="ES2D", label="scan")
                        p_h = gr.Slider(2, 64, value=8, step=1, label="grid height (56: stage 1 at 224x224)")
                        p_w = gr.Slider(2, 64, value=8, step=1, label="grid width")
                        p_step = gr.Slider(1, MAX_STEP, value=2, step=1, label="step p")
                        p_sample, p_upload = image_inputs("astronaut")
                        p_go = gr.Button("Draw", variant="primary")
                        p_info = gr.Markdown()
                    with gr.Column(scale=2):
                        p_main = gr.Plot(label="patches by route, reading order (press play)")
                p_regrouped = gr.Plot(label="what each route scans: the regrouped sub-images")
                p_compare = gr.Plot(label="ES2D beside SS2D")
                p_in = [p_scan, p_h, p_w, p_step, p_sample, p_upload]
                p_out = [p_main, p_regrouped, p_compare, p_info]
                p_go.click(partition_view, p_in, p_out, api_name="partition")

            with gr.Tab("Receptive fields"):
                with gr.Row():
                    e_level = gr.Radio(["mixer", "block", "stage"], value="stage", label="level")
                    e_stage = gr.Slider(0, 3, value=0, step=1, label="stage")
                    e_block = gr.Slider(0, 8, value=0, step=1, label="block in the stage (mixer, block levels)")
                    e_row = gr.Number(value=-1, precision=0, label="output row (-1: centre)")
                    e_col = gr.Number(value=-1, precision=0, label="output column (-1: centre)")
                with gr.Row():
                    e_inputs = gr.Radio(["random", "natural images"], value="random", label="inputs")
                    e_count = gr.Slider(1, 16, value=1, step=1, label="images to average over")
                    e_go = gr.Button("Compute", variant="primary")
                    e_more = gr.Button("Average over 8 images")
                e_fig = gr.Plot(label="effective receptive field, all routes and each route alone")
                with gr.Row():
                    e_table = gr.Dataframe(label="area ratios (share of the image holding that share of the total)",
                                           scale=3)
                    e_picker = gr.Image(label="click to pick the output position", interactive=False, scale=1,
                                        buttons=[])
                e_info = gr.Markdown()
                e_shape = gr.State(None)
                e_in = model_inputs + [e_level, e_stage, e_block, e_row, e_col, e_inputs, e_count]
                e_out = [e_fig, e_table, e_info, e_picker, e_shape]
                e_go.click(erf_view, e_in, e_out, api_name="erf", **ONE_MODEL_AT_A_TIME)
                e_more.click(lambda: 8, None, e_count).then(erf_view, e_in, e_out, api_name=False,
                                                            **ONE_MODEL_AT_A_TIME)
                e_picker.select(pick_position, e_shape, [e_row, e_col]).then(erf_view, e_in, e_out, api_name=False,
                                                                             **ONE_MODEL_AT_A_TIME)

            with gr.Tab("Attribution"):
                with gr.Row():
                    a_sample, a_upload = image_inputs("chelsea")
                    a_target = gr.Number(value=-1, precision=0, label="class id (-1: the top class)")
                    a_methods = gr.CheckboxGroup(list(ATTRIBUTION_METHODS), value=["Integrated Gradients", "Saliency"],
                                                 label="methods")
                    a_go = gr.Button("Explain", variant="primary")
                with gr.Row():
                    a_top = gr.Label(num_top_classes=5, label="top-5 classes")
                    a_info = gr.Markdown()
                a_maps = gr.Plot(label="attributions")
                with gr.Row():
                    a_routes = gr.Plot(label="logit change with one scan direction removed")
                    a_table = gr.Dataframe(label="per-direction contribution")
                a_go.click(attribution_view, model_inputs + [a_sample, a_upload, a_target, a_methods],
                           [a_top, a_maps, a_routes, a_table, a_info], api_name="attribution", **ONE_MODEL_AT_A_TIME)

            with gr.Tab("Hidden attention"):
                with gr.Row():
                    h_mixer = gr.Number(value=0, precision=0, label="mixer (0: the first block's)")
                    h_route = gr.Dropdown(["all", "0", "1", "2", "3"], value="all", allow_custom_value=True,
                                          label="route")
                    h_row = gr.Number(value=28, precision=0, label="query row")
                    h_col = gr.Number(value=28, precision=0, label="query column")
                    h_sample, h_upload = image_inputs("chelsea")
                    h_go = gr.Button("Show", variant="primary")
                h_row_fig = gr.Plot(label="the query's attention over the image")
                h_matrix = gr.Plot(label="attention matrices (scan order and image order)")
                h_info = gr.Markdown()
                h_go.click(hidden_attention_view, model_inputs + [h_mixer, h_route, h_row, h_col, h_sample, h_upload],
                           [h_row_fig, h_matrix, h_info], api_name="hidden_attention", **ONE_MODEL_AT_A_TIME)

            with gr.Tab("Ablations"):
                with gr.Row():
                    b_table = gr.Dropdown(["scan_fusion", "paper_table5", "stage_layout", "scan_step", "erf_init",
                                           "scaling"], value="scan_fusion", label="table")
                    b_variant = gr.Dropdown(["all", "tiny", "small", "base"], value="all", label="variant")
                    b_scan = gr.Dropdown(["all", "ES2D", "SS2D"], value="all", label="scan")
                    b_conv = gr.Dropdown(["all", "yes", "no"], value="all", label="conv branch")
                    b_gate = gr.Dropdown(["all", "yes", "no"], value="all", label="gate")
                    b_column = gr.Dropdown(["FLOPs (G, 224²)", "params (M)", "texture (local) accuracy (%)",
                                            "markers (global) accuracy (%)", "ERF area at 0.99, init (%)"],
                                           value="FLOPs (G, 224²)", allow_custom_value=True, label="chart column")
                    b_go = gr.Button("Show", variant="primary")
                b_info = gr.Markdown()
                b_df = gr.Dataframe(label="ablation table (filtered)", wrap=True)
                b_chart = gr.Plot(label="chart")
                b_in = [b_table, b_variant, b_scan, b_conv, b_gate, b_column]
                b_go.click(ablation_view, b_in, [b_df, b_chart, b_info], api_name="ablation_table")
                with gr.Accordion("Measure a design that is not in the tables (cost columns, on this machine)",
                                  open=False):
                    with gr.Row():
                        n_variant = gr.Dropdown(list(evmamba.VARIANTS), value="tiny", label="variant")
                        n_scan = gr.Radio(["ES2D", "SS2D"], value="ES2D", label="scan")
                        n_step = gr.Slider(1, MAX_STEP, value=3, step=1, label="ES2D step p")
                        n_conv = gr.Checkbox(value=True, label="conv branch")
                        n_gate = gr.Checkbox(value=True, label="channel gate")
                        n_stages = gr.Dropdown(list(evmamba.STAGE_LAYOUTS), value="released", label="stages")
                        n_go = gr.Button("Measure")
                    n_df = gr.Dataframe(label="measured in this session")
                    n_state = gr.State(None)
                    n_go.click(measure_view, [n_variant, n_scan, n_step, n_conv, n_gate, n_stages, n_state],
                               [n_df, n_state], api_name="measure_row", **ONE_MODEL_AT_A_TIME)

            with gr.Tab("About"):
                gr.Markdown(ABOUT)

        demo.load(partition_view, p_in, p_out, api_name=False).then(ablation_view, b_in, [b_df, b_chart, b_info],
                                                                      api_name=False)
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The evmamba browser demo.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--checkpoint", default="", help="a checkpoint file or hf:OWNER/REPO[/FILE] (default: random)")
    p.add_argument("--variant", default="tiny", choices=list(evmamba.VARIANTS))
    p.add_argument("--ablations", default="", help="folder of an ablation run (default: assets/ablations)")
    p.add_argument("--concurrency", type=int, default=2, help="requests computed at once (default 2)")
    return p.parse_args(argv)


def configure(args):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    SETTINGS["device"] = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    SETTINGS["checkpoint"] = args.checkpoint
    SETTINGS["variant"] = args.variant
    SETTINGS["ablations"] = args.ablations
    ablation_tables.cache_clear()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    configure(args)
    demo = build_demo()
    demo.queue(default_concurrency_limit=args.concurrency, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
