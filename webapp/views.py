"""One handler per tab: check the web user's values, refuse a request over budget before it starts, call
evmamba or ablations in a job (see jobs), and turn the result into widgets' values."""
from __future__ import annotations

import functools
import os

import gradio as gr
import numpy as np

import evmamba
from ablations.study.analysis import study_pictures
from evmamba.analysis import attribution as attr_lib
from evmamba.analysis import erf as erf_lib
from evmamba.analysis import hidden_attention as att_lib
from evmamba.analysis.attribution_figures import attribution_figure, route_contribution_figure
from evmamba.analysis.erf_figures import erf_figure
from evmamba.analysis.hidden_attention_figures import attention_row_figure, hidden_attention_figure
from evmamba.analysis.images import DEFAULT_SAMPLES, fit_image, input_spec, sample_names
from evmamba.analysis.partition_plotly import partition_plotly, regrouped_plotly, scan_comparison_plotly
from evmamba.checks import choice
from evmamba.families import family, scans
from evmamba.study_models import is_study_name, study_model_meta

from . import jobs
from .errors import shows_errors
from .inputs import whole
from .panel import takes_design, takes_filters, takes_model
from .settings import MAX_GRID, MAX_IMAGE_BYTES, MAX_IMAGES, MAX_STEP, SETTINGS

TASK_SAMPLE_COUNT = 6  # test images of each shipped study model's task offered as samples


@functools.cache
def task_samples() -> dict:
    """{sample name: (study model, index)}: the first test images of the task of each study model shipped
    with evmamba (the images its accuracy was measured on), one set per task."""
    from ablations.study.tasks import TASKS, draw_image
    from evmamba.study_models import PREFIX, study_models
    out, seen = {}, set()
    for name, meta in study_models().items():
        task = meta["task"]
        if task in seen:
            continue
        seen.add(task)
        for i in range(TASK_SAMPLE_COUNT):
            label = draw_image(task, meta["image_size"], meta["test_seed"], i)[1][0]
            out[f"{task} test image {i} ({TASKS[task].class_names[0][label]})"] = (PREFIX + name, i)
    return out


def task_image(name: str) -> np.ndarray:
    """A task sample as an (H, W, 3) float picture in [0, 1]."""
    source, index = task_samples()[name]
    return study_pictures(source, 1, index)[0]


SUITED = "suited to the weights"  # the default of every input choice: follows the model the request runs on
SAMPLES = [SUITED, *task_samples(), *sample_names()]
ATTRIBUTION_METHODS = {"Integrated Gradients": "integrated_gradients", "Saliency": "saliency",
                       "Input x Gradient": "input_x_gradient", "SmoothGrad": "smoothgrad"}
IG_STEPS, SMOOTHGRAD_SAMPLES = 24, 8
INPUTS = (SUITED, "random", "natural images", "task images")


# ---- inputs -------------------------------------------------------------------------------------------
def suited_sample(model) -> str:
    """The sample image that suits a model: its task's first test image for a study model, else the
    photograph chelsea."""
    source = model.weights.source
    task = study_model_meta(source)["task"] if is_study_name(source) else None
    return next((n for n in task_samples() if n.startswith(f"{task} test image")), "chelsea")


def pick_image(sample: str, upload, suited: str) -> tuple[np.ndarray, str | None, str]:
    """(picture, note, name) from an uploaded file if there is one, else the chosen sample (SUITED or None:
    the sample named `suited`)."""
    sample = suited if sample in (None, SUITED) else sample
    if upload:
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise ValueError(f"{os.path.basename(path)} is {os.path.getsize(path) / 2**20:.0f} MB: images up to "
                             f"{MAX_IMAGE_BYTES // 2**20} MB are read here; downscale it first")
        try:
            picture, note = fit_image(path)
        except ValueError as e:  # name the file as the user knows it, not by the server's temporary path
            raise ValueError(str(e).replace(path, os.path.basename(path))) from None
        return picture, note, os.path.basename(path)
    if sample == "":
        raise ValueError("no image: upload one, or choose a sample image")
    if sample in task_samples():
        return task_image(sample), None, sample
    return fit_image(choice(sample, "sample image", SAMPLES[1:]))[0], None, sample


LABEL_BOX_INCHES = 0.35  # Gradio draws a plot's label over the top-left corner of the figure


def below_label(fig):
    """The figure laid out as it is, then given a clear band at its top for Gradio's label box (the layout
    is frozen, the canvas grows upwards, and every axes and figure text keeps its place in inches)."""
    fig.draw_without_rendering()  # runs the layout engine once
    fig.set_layout_engine("none")
    height = fig.get_figheight()
    shrink = height / (height + LABEL_BOX_INCHES)
    fig.set_figheight(height + LABEL_BOX_INCHES)
    for ax in fig.axes:
        box = ax.get_position()
        ax.set_position([box.x0, box.y0 * shrink, box.width, box.height * shrink])
    for text in fig.texts:  # the suptitle is one of them
        if text.get_transform() is fig.transSubfigure:
            x, y = text.get_position()
            text.set_position((x, y * shrink))
    return fig


def notes(*items) -> str:
    return "\n".join(f"- {n}" for n in items if n)


# ---- tab 1: skip-sampling ------------------------------------------------------------------------------
@shows_errors
def partition_view(scan="ES2D", height=8, width=8, step=2, sample="astronaut", upload=None):
    scan = choice(scan.lower() if isinstance(scan, str) else scan, "scan", scans())
    height = whole(height, "grid height", 1, MAX_GRID)
    width = whole(width, "grid width", 1, MAX_GRID)
    param = family(scan).param
    step = whole(step, "step", 1, MAX_STEP) if param else 2
    if param and step > max(height, width):
        raise ValueError(f"{scan}'s {param} {step} is larger than the {height}x{width} grid: the picture would "
                         f"be mostly padding; choose a {param} of at most {max(height, width)}")
    picture, note, name = pick_image(sample, upload, "astronaut")
    routes = evmamba.scan_routes(scan, height, width, step)
    main = partition_plotly(routes, picture, frames=40 if routes.tokens_read <= 16384 else 20)
    main.update_layout(width=None, autosize=True, margin=dict(t=130),
                       legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    regrouped = regrouped_plotly(routes, picture)
    ch, cw = min(height, 16), min(width, 16)
    comparison = scan_comparison_plotly(picture, height=ch, width=cw, step=min(step, max(ch, cw)), scan=scan)
    ss2d = evmamba.scan_routes("ss2d", height, width)
    summary = notes(
        f"{scan.upper()} on a {height}x{width} grid" + (f" with {param} {step}" if param else "")
        + f": {routes.num_routes} routes of {routes.length} tokens, {routes.tokens_read} tokens read "
        f"(SS2D reads {ss2d.tokens_read}).",
        (f"padded to {routes.padded_height}x{routes.padded_width}: the hatched patches are zeros that the scan "
         "reads and whose outputs are dropped") if routes.padded_shape != (height, width) else None,
        f"comparison drawn on a {ch}x{cw} grid so every step stays readable" if (ch, cw) != (height, width) else None,
        note, f"image: {name}")
    return main, regrouped, comparison, summary


# ---- tab 2: receptive fields ---------------------------------------------------------------------------
def _natural(count: int):
    names = list(DEFAULT_SAMPLES) + [n for n in sample_names() if n not in DEFAULT_SAMPLES]
    return [names[i % len(names)] for i in range(count)]


def inputs_for(model) -> str:
    """The receptive-field inputs that suit a model: a study model's task images, natural images for other
    trained weights, random inputs for random weights."""
    if is_study_name(model.weights.source):
        return "task images"
    return "natural images" if model.weights.trained else "random"


def large(model) -> bool:
    """Whether a request on `model` takes a large compute slot (its images' side, jobs.is_large)."""
    return jobs.is_large(model.config, input_spec(model).size)


def erf_budget(config, level="stage", count=1, size=224, **_):
    """Refuse an ERF over budget: a forward and backward pass per input and per map (all routes, then each
    route alone)."""
    count = whole(count, "number of images", 1, MAX_IMAGES)
    maps = 1 + evmamba.routes.num_routes(config.scan, config.step)
    share = 1.0 if level in ("stage", "network") else 0.15  # one mixer or block is a small part of the network
    jobs.check_budget(jobs.passes_cost(config, count * maps * share, size), "receptive field",
                      "average over fewer images, or choose a smaller variant or ES2D")


@shows_errors
@takes_model(budget=erf_budget)
async def erf_view(model, what, level="stage", stage=0, block=0, row=-1, col=-1, inputs=SUITED, count=1,
                   progress=gr.Progress()):
    level = choice(level, "level", erf_lib.LEVELS)
    count = whole(count, "number of images", 1, MAX_IMAGES)
    stage = whole(stage, "stage", 0, len(model.layers) - 1)
    block = whole(block, "block", 0, max(len(s.blocks) for s in model.layers) - 1)
    row, col = whole(row, "row", -1, 4096), whole(col, "column", -1, 4096)
    if (row < 0) != (col < 0):
        raise ValueError("set both the output row and column, or both to -1 for the centre")
    inputs = choice(inputs, "inputs", INPUTS)
    suited = inputs == SUITED
    inputs = inputs_for(model) if suited else inputs
    source = "random"
    if inputs == "natural images":
        source = _natural(count)
    elif inputs == "task images":
        source = study_pictures(model, count)
    result = await jobs.run(erf_lib.effective_receptive_fields, model, level, stage=stage, block=block,
                            inputs=source, num_inputs=count if inputs == "random" else None,
                            position=None if row < 0 else (row, col), bar=False, progress=progress, large=large(model))
    info = notes(what, f"level {level}: {result.module}; output grid {result.output_grid[0]}x"
                 f"{result.output_grid[1]}, position {result.requested}; area ratios in RepLKNet's convention "
                 "(and the cell-centred one beside them); click the map on the right to pick another output "
                 "position", f"inputs: {inputs}" + (", suited to the weights" if suited else "")
                 + f" ({count} averaged)",
                 *result.notes)
    return (below_label(erf_figure([result])), result.table().round(4), info, picker_image(result),
            (*result.input_shape, *result.output_grid))


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
    """A click on the ERF picture -> the output position under it (an internal handler, not in the API)."""
    if not shape or evt is None or evt.index is None:
        return gr.update(), gr.update()
    ih, iw, oh, ow = shape
    scale = max(1, int(np.ceil(224 / max(ih, iw))))
    x, y = evt.index[:2]
    return min(int(y / scale * oh / ih), oh - 1), min(int(x / scale * ow / iw), ow - 1)


# ---- tab 3: attribution ----------------------------------------------------------------------------
def _methods(methods) -> list[str]:
    chosen = [ATTRIBUTION_METHODS[choice(m, "attribution method", ATTRIBUTION_METHODS)] for m in (methods or [])]
    if not chosen:
        raise ValueError(f"choose at least one attribution method: {', '.join(ATTRIBUTION_METHODS)}")
    return chosen


def attribution_budget(config, methods=(), size=224, **_):
    """Refuse an attribution over budget: the methods' passes, and one forward pass (a third of a pass)
    per route and block for the route contributions."""
    passes = {"integrated_gradients": IG_STEPS + 2, "saliency": 1, "input_x_gradient": 1,
              "smoothgrad": SMOOTHGRAD_SAMPLES}
    evss_blocks = sum(d for kind, d in zip(config.stages, config.depths) if kind == "evss")
    routes = evmamba.routes.num_routes(config.scan, config.step)
    forwards = (evss_blocks + 1) * (routes + 1) + 1
    jobs.check_budget(jobs.passes_cost(config, sum(passes[m] for m in _methods(methods)) + forwards / 3, size),
                      "attribution", "choose fewer methods (Integrated Gradients and SmoothGrad cost the most), a "
                      "smaller variant or ES2D")


def _attribute(model, picture, target, methods, progress):
    # images per pass: at 224x224 each one's forward+backward holds ~100 MB of activations, so one at a time
    batch = 4 if model.weights.inputs.size <= 112 else 1
    att = attr_lib.attributions(model, picture, target=target, methods=methods, n_steps=IG_STEPS,
                                smoothgrad_samples=SMOOTHGRAD_SAMPLES, batch_size=batch, bar=False,
                                progress=lambda f, desc=None: progress(0.8 * f, desc=desc))
    contributions = attr_lib.route_contributions(model, picture, target=att.target, bar=False,
                                                 progress=lambda f, desc=None: progress(0.8 + 0.2 * f, desc=desc))
    return att, contributions


@shows_errors
@takes_model(budget=attribution_budget)
async def attribution_view(model, what, sample=SUITED, upload=None, target=-1,
                           methods=("Integrated Gradients", "Saliency"), progress=gr.Progress()):
    picture, note, name = pick_image(sample, upload, suited_sample(model))
    chosen = _methods(methods)
    target = whole(target, "class", -1, model.num_classes - 1)
    prediction = attr_lib.predict(model, picture)
    top = {f"{r['name']} ({int(r['class'])})": float(r["probability"]) for _, r in prediction.classes.iterrows()}
    att, contributions = await jobs.run(_attribute, model, picture, None if target < 0 else target, tuple(chosen),
                                        progress=progress, large=large(model))
    info = notes(what, prediction.note, note, f"image: {name}; attributions for class {att.target} "
                 f"({att.target_name})")
    return (top, below_label(attribution_figure(att)), below_label(route_contribution_figure(contributions)),
            contributions.round(4), info)


# ---- tab 4: hidden attention ---------------------------------------------------------------------------
def attention_budget(config, route="all", size=224, **_):
    """Refuse a hidden attention over budget: about half a pass per route (measured at 224²)."""
    routes = evmamba.routes.num_routes(config.scan, config.step) if route in (None, "", "all") else 1
    jobs.check_budget(jobs.passes_cost(config, 0.5 * routes, size), "hidden attention",
                      "choose one route, or a smaller variant")


@shows_errors
@takes_model(budget=attention_budget)
async def hidden_attention_view(model, what, mixer=0, route="all", row=-1, col=-1, sample=SUITED, upload=None,
                                progress=gr.Progress()):
    mixers = model.mixers()
    if not mixers:
        raise ValueError("this model has no scan mixer (all stages are inverted-residual blocks): choose a "
                         "layout with EVSS stages")
    mixer = whole(mixer, "mixer", 0, len(mixers) - 1)
    picture, note, name = pick_image(sample, upload, suited_sample(model))
    k = mixers[mixer][1].num_routes
    routes = None if route in (None, "", "all") else [whole(route, "route", 0, k - 1)]
    atts = await jobs.run(att_lib.model_hidden_attention, model, picture, mixer=mixer, routes=routes, reduce="mean",
                          bar=False, progress=progress, large=large(model))
    h, w = atts[0].grid
    row, col = whole(row, "query row", -1, h - 1), whole(col, "query column", -1, w - 1)
    if (row < 0) != (col < 0):
        raise ValueError("set both the query row and column, or both to -1 for the centre")
    row, col = (h // 2, w // 2) if row < 0 else (row, col)
    info = notes(what, f"{mixers[mixer][0]}: a {h}x{w} map; query ({row}, {col}); the mean of alpha over "
                 f"{atts[0].channels} channels", note, f"image: {name}")
    return below_label(attention_row_figure(atts, (row, col))), below_label(hidden_attention_figure(atts)), info


def routes_of(scan="es2d", step=2) -> list[str]:
    """The hidden-attention tab's route choices for a scan: all, then each route of that scan."""
    scan = str(scan).lower()
    return ["all", *map(str, range(evmamba.routes.num_routes(scan, int(step) if family(scan).param else 2)))]


def route_choices(scan, step):
    """The route dropdown for the panel's new scan or step (an internal event)."""
    try:
        return gr.update(choices=routes_of(scan, step), value="all")
    except (TypeError, ValueError):
        return gr.update()


# ---- tab 5: ablations ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def ablation_tables():
    from ablations.browse import load_tables
    return load_tables(SETTINGS.ablations or None)


@functools.lru_cache(maxsize=1)
def ablation_grid():
    """The ablation grid (read once: the tables' order, titles and questions)."""
    from ablations.config import load_grid
    return load_grid()


def table_names() -> list[str]:
    """The ablation tables in the grid's order, then any others the run wrote (erf_init, scaling)."""
    tables, grid = ablation_tables(), ablation_grid().tables
    return [n for n in grid if n in tables] + [n for n in tables if n not in grid]


def ablation_titles() -> dict:
    return {t.name: f"**{t.title}.** {t.question}" for t in ablation_grid().tables.values()}


def chart_columns(table) -> list[str]:
    """The columns of an ablation table that hold numbers (the chart's choices)."""
    from ablations.browse import numeric_columns
    tables = ablation_tables()
    return numeric_columns(tables[table]) if table in tables else []


FIRST_COMPARED = ("accuracy", "top-1", "FLOPs", "throughput")  # what a visitor compares first, in this order


def chart_default(table) -> str | None:
    """The column a table's chart opens on: the first accuracy, top-1, FLOPs or throughput column whose rows
    differ (a chart of equal bars compares nothing), else the first column that holds numbers."""
    columns = chart_columns(table)
    df = ablation_tables().get(table)
    for word in FIRST_COMPARED:
        for c in columns:
            if word in c and df[c].dropna().nunique() > 1:
                return c
    return columns[0] if columns else None


def table_columns(table):
    """The chart-column dropdown for another table (an internal event)."""
    return gr.update(choices=chart_columns(table), value=chart_default(table))


@shows_errors
@takes_filters
def ablation_view(selection, table="scan_fusion", column="FLOPs (G, 224²)"):
    from ablations.browse import column_chart, filter_rows, numeric_columns
    tables = ablation_tables()
    table = choice(table, "table", tables)
    df = filter_rows(tables[table], **selection)
    if df.empty:
        raise ValueError("no row of this table matches these filters: set some of them back to 'all'")
    columns = numeric_columns(df)
    note = None
    if column not in columns:
        note = f"column {str(column)[:80]!r} has no numbers in this table; showing {columns[0]!r}" if columns else None
        column = columns[0] if columns else None
    chart = column_chart(df, column) if column else None
    info = notes(ablation_titles().get(table), f"{len(df)} rows. Columns marked [paper] or [authors' code] are the "
                 "paper's reference numbers; every other cell was measured by this project (see "
                 "assets/ablations/index.md for how, on which device and with which seeds).", note)
    return df, chart, info


def measure_budget(config, **_):
    jobs.check_budget(jobs.passes_cost(config, 12), "measurement", "choose a smaller variant or ES2D")


@shows_errors
@takes_design(budget=measure_budget)
async def measure_view(config, measured=None, progress=gr.Progress()):
    from ablations.browse import measure_row
    row = await jobs.run(measure_row, config, device=SETTINGS.device, progress=progress, large=jobs.is_large(config))
    import pandas as pd
    previous = measured if isinstance(measured, pd.DataFrame) and not measured.empty else None
    table = row if previous is None else pd.concat([previous, row], ignore_index=True)
    return table, table


__all__ = ["ablation_view", "attribution_view", "erf_view", "hidden_attention_view", "measure_view",
           "partition_view", "pick_position", "route_choices", "table_columns"]
