"""Analyses of what the scan does: partitions, receptive fields, hidden attention, attributions, cost.

Every function returns data (arrays, DataFrames) or a figure; none saves, shows or prints."""

import importlib

# Public names and the module that defines each, imported on first use: the plotting modules need
# matplotlib or plotly and the tables pandas, so `import evmamba.analysis` stays light.
_LAZY = {
    # partitions: data, matplotlib figures, plotly figures
    "Partition": "partition", "partition": "partition", "sample_image": "partition", "stage_routes": "partition",
    "resolve_routes": "partition", "to_rgb": "partition",
    "partition_figure": "partition_figures", "route_paths_figure": "partition_figures",
    "scan_comparison_figure": "partition_figures",
    "partition_plotly": "partition_plotly", "regrouped_plotly": "partition_plotly",
    "scan_comparison_plotly": "partition_plotly",
    # cost
    "FlopCount": "cost", "count_flops": "cost", "parameter_breakdown": "cost", "scan_flops": "cost",
    # effective receptive fields per scan direction
    "ERF": "erf", "RouteERFs": "erf", "effective_receptive_fields": "erf", "mixer_erf": "erf", "block_erf": "erf",
    "network_erf": "erf", "replknet_erf": "erf", "area_ratios": "erf_maps", "high_contribution_square": "erf_maps",
    "normalise": "erf_maps",
    "erf_figure": "erf_figures", "area_ratio_figure": "erf_figures",
    # hidden attention
    "HiddenAttention": "hidden_attention", "implicit_attention": "hidden_attention",
    "implicit_attention_reference": "hidden_attention", "hidden_attention": "hidden_attention",
    "model_hidden_attention": "hidden_attention", "conv_activations": "hidden_attention",
    "hidden_attention_figure": "hidden_attention_figures", "attention_row_figure": "hidden_attention_figures",
    # attributions
    "Prediction": "attribution", "Attributions": "attribution", "predict": "attribution",
    "attributions": "attribution", "route_contributions": "attribution",
    "prediction_figure": "attribution_figures", "attribution_figure": "attribution_figures",
    "route_contribution_figure": "attribution_figures",
    # natural images offline, and what analyses do to a forward pass (per call: the model is not changed)
    "load_image": "images", "load_images": "images", "image_batch": "images", "sample_names": "images",
    "keep_only_route": "interventions", "drop_route": "interventions", "routes_kept": "interventions",
    "scan_replaced_by_identity": "interventions", "capturing": "interventions", "for_inference": "interventions",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
