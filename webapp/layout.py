"""The Gradio page: the model panel (made from ModelConfig's fields), six tabs, named API endpoints for the
analyses and none for the page's internal events."""
from __future__ import annotations

import gradio as gr

from evmamba.analysis.erf import LEVELS
from evmamba.families import scans

from . import views
from . import weights as W
from .panel import design_of, filter_widgets, widgets
from .settings import MAX_GRID, MAX_IMAGES, MAX_STEP, SETTINGS

PRIVATE = dict(api_visibility="private")  # the page's own events: not callable through the API
# every event that computes with a model, in one Gradio concurrency group: at most --concurrency of them run
# at once, building their model and drawing their figures included (each event's own limit would let the
# three model tabs and the page's private events run side by side, each with its figures in memory)
MODEL = dict(concurrency_id="model")

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
the smallest square around the centre holding more than that share of the total contribution, as a
fraction of the image, in RepLKNet's convention (their `analyze_erf.py`: the map first taken as
log10(1 + x), odd squares around the map's centre pixel; "none" where no square qualifies), with the
scale-free cell-centred reading beside it.

**Attribution.** The most probable classes (ImageNet's for the authors' weights, the task's for the
study's models; only meaningful with trained weights), captum attributions for one class, and how much
the class logit changes when one scan direction is removed from the blocks.

**Hidden attention.** A selective scan is a linear attention whose weights come from its inputs
(alpha[t, s] = C_t · exp(Σ delta·A) · delta_s B_s): the picture is one query position's row of that
matrix, drawn back on the image, for each route.

**Ablations.** Cost (parameters, FLOPs, throughput, memory) of the design switches, receptive-field
area ratios, and accuracy on procedural training tasks, next to the paper's reference rows.

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


def image_inputs(default: str, choices=tuple(views.SAMPLES)):
    with gr.Row():
        # custom values reach the handler, which refuses them in a short message
        sample = gr.Dropdown(list(choices), value=default, label="sample image", allow_custom_value=True)
        upload = gr.File(label="or upload an image", file_types=["image"], type="filepath", height=100)
    return sample, upload


def model_panel():
    """The model panel's widgets, in the order the model handlers take them."""
    with gr.Accordion("Model (used by the receptive-field, attribution and hidden-attention tabs)", open=False):
        with gr.Row():
            design = widgets()
        with gr.Row():
            weights = gr.Dropdown(W.choices(), value=W.default(), label="weights", allow_custom_value=True,
                                  info="the study's trained models (choosing one sets its design above), "
                                       "random, the authors' ImageNet-1K weights (downloaded), or a file the "
                                       "server allows")
            upload = gr.File(label="or upload a checkpoint (.pth, .pt, .safetensors)", type="filepath", height=100,
                             file_types=[".pth", ".pt", ".safetensors", ".bin", ".ckpt"])
            seed = gr.Number(value=0, precision=0, label="seed of the random weights")
        weights.change(design_of, weights, design, **PRIVATE)  # a study model sets its own design
    return design, [*design, weights, upload, seed]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="evmamba: EfficientVMamba explorer") as demo:
        gr.Markdown("# EfficientVMamba explorer\nAtrous selective scan (ES2D) against VMamba's four-way scan "
                    f"(SS2D). Running on **{SETTINGS.device}**.")
        design, model_inputs = model_panel()
        scan_widget, step_widget = design[1], design[2]

        with gr.Tabs():
            with gr.Tab("Skip-sampling"):
                with gr.Row():
                    with gr.Column(scale=1):
                        p_scan = gr.Radio([s.upper() for s in scans()], value="ES2D", label="scan")
                        p_h = gr.Slider(2, MAX_GRID, value=8, step=1, label="grid height (56: stage 1 at 224x224)")
                        p_w = gr.Slider(2, MAX_GRID, value=8, step=1, label="grid width")
                        p_step = gr.Slider(1, MAX_STEP, value=2, step=1, label="step p (ES2D) or window side (windows)")
                        p_sample, p_upload = image_inputs("astronaut", views.SAMPLES[1:])
                        p_go = gr.Button("Draw", variant="primary")
                        p_info = gr.Markdown()
                    with gr.Column(scale=2):
                        p_main = gr.Plot(label="patches by route, reading order (press play)")
                p_regrouped = gr.Plot(label="what each route scans: the regrouped sub-images")
                p_compare = gr.Plot(label="ES2D beside SS2D")
                p_in = [p_scan, p_h, p_w, p_step, p_sample, p_upload]
                p_out = [p_main, p_regrouped, p_compare, p_info]
                p_go.click(views.partition_view, p_in, p_out, api_name="partition")

            with gr.Tab("Receptive fields"):
                with gr.Row():
                    e_level = gr.Radio(list(LEVELS), value="stage", label="level")
                    e_stage = gr.Slider(0, 3, value=0, step=1, label="stage")
                    e_block = gr.Slider(0, 8, value=0, step=1, label="block in the stage (mixer, block levels)")
                    e_row = gr.Number(value=-1, precision=0, label="output row (-1: centre)")
                    e_col = gr.Number(value=-1, precision=0, label="output column (-1: centre)")
                with gr.Row():
                    e_inputs = gr.Radio(list(views.INPUTS), value=views.SUITED, label="inputs",
                                        info="suited to the weights: a study model's task images, natural "
                                             "images for other trained weights, random inputs for random weights")
                    study = W.study_design(W.default()) is not None  # task images: average over 8 on load
                    e_count = gr.Slider(1, MAX_IMAGES, value=8 if study else 1, step=1,
                                        label="images to average over")
                    e_go = gr.Button("Compute", variant="primary")
                    e_more = gr.Button("Average over 8 images")
                e_fig = gr.Plot(label="effective receptive field, all routes and each route alone")
                with gr.Row():
                    e_table = gr.Dataframe(label="area ratios: RepLKNet's convention, then the cell-centred one "
                                                 "(share of the image holding more than that share of the total)",
                                           scale=3)
                    e_picker = gr.Image(label="click to pick the output position", interactive=False, scale=1,
                                        buttons=[])
                e_info = gr.Markdown()
                e_shape = gr.State(None)
                e_in = model_inputs + [e_level, e_stage, e_block, e_row, e_col, e_inputs, e_count]
                e_out = [e_fig, e_table, e_info, e_picker, e_shape]
                e_go.click(views.erf_view, e_in, e_out, api_name="erf", **MODEL)
                e_more.click(lambda: 8, None, e_count, **PRIVATE).then(views.erf_view, e_in, e_out, **PRIVATE,
                                                                        **MODEL)
                e_picker.select(views.pick_position, e_shape, [e_row, e_col], **PRIVATE).then(
                    views.erf_view, e_in, e_out, **PRIVATE, **MODEL)

            with gr.Tab("Attribution"):
                with gr.Row():
                    a_sample, a_upload = image_inputs(views.SUITED)
                    a_target = gr.Number(value=-1, precision=0, label="class id (-1: the top class)")
                    a_methods = gr.CheckboxGroup(list(views.ATTRIBUTION_METHODS),
                                                 value=["Integrated Gradients", "Saliency"], label="methods")
                    a_go = gr.Button("Explain", variant="primary")
                with gr.Row():
                    a_top = gr.Label(num_top_classes=5, label="top-5 classes")
                    a_info = gr.Markdown()
                a_maps = gr.Plot(label="attributions")
                with gr.Row():
                    a_routes = gr.Plot(label="logit change with one scan direction removed")
                    a_table = gr.Dataframe(label="per-direction contribution")
                a_go.click(views.attribution_view, model_inputs + [a_sample, a_upload, a_target, a_methods],
                           [a_top, a_maps, a_routes, a_table, a_info], api_name="attribution", **MODEL)

            with gr.Tab("Hidden attention"):
                with gr.Row():
                    h_mixer = gr.Number(value=0, precision=0, label="mixer (0: the first block's)")
                    h_route = gr.Dropdown(views.routes_of(), value="all", label="route", allow_custom_value=True)
                    h_row = gr.Number(value=-1, precision=0, label="query row (-1: centre)")
                    h_col = gr.Number(value=-1, precision=0, label="query column (-1: centre)")
                    h_sample, h_upload = image_inputs(views.SUITED)
                    h_go = gr.Button("Show", variant="primary")
                h_row_fig = gr.Plot(label="the query's attention over the image")
                h_matrix = gr.Plot(label="attention matrices (scan order and image order)")
                h_info = gr.Markdown()
                h_go.click(views.hidden_attention_view,
                           model_inputs + [h_mixer, h_route, h_row, h_col, h_sample, h_upload],
                           [h_row_fig, h_matrix, h_info], api_name="hidden_attention", **MODEL)
                for widget in (scan_widget, step_widget):  # the routes of the model chosen
                    widget.change(views.route_choices, [scan_widget, step_widget], h_route, **PRIVATE)

            with gr.Tab("Ablations"):
                tables = views.table_names()
                with gr.Row():
                    b_table = gr.Dropdown(tables, value=tables[0], label="table")
                    b_filters = filter_widgets(views.ablation_tables())
                    b_column = gr.Dropdown(views.chart_columns(tables[0]), value=views.chart_default(tables[0]),
                                           label="chart column")
                    b_go = gr.Button("Show", variant="primary")
                b_info = gr.Markdown()
                b_df = gr.Dataframe(label="ablation table (filtered)", wrap=True)
                b_chart = gr.Plot(label="chart")
                b_in = [*b_filters, b_table, b_column]
                b_go.click(views.ablation_view, b_in, [b_df, b_chart, b_info], api_name="ablation_table")
                b_table.change(views.table_columns, b_table, b_column, **PRIVATE)
                with gr.Accordion("Measure a design that is not in the tables (cost columns, on this machine)",
                                  open=False):
                    with gr.Row():
                        n_design = widgets()
                        n_go = gr.Button("Measure")
                    n_df = gr.Dataframe(label="measured in this session")
                    n_state = gr.State(None)
                    n_go.click(views.measure_view, [*n_design, n_state], [n_df, n_state], api_name="measure_row",
                               **MODEL)

            with gr.Tab("About"):
                gr.Markdown(ABOUT)

        # the first tab's pictures, the ablation table, and the receptive fields of the starting model (a
        # trained one when the study's models are shipped), so each tab opens with something to look at
        demo.load(views.partition_view, p_in, p_out, **PRIVATE).then(
            views.ablation_view, b_in, [b_df, b_chart, b_info], **PRIVATE).then(
            views.erf_view, e_in, e_out, **PRIVATE, **MODEL)
    return demo


__all__ = ["build_demo"]
