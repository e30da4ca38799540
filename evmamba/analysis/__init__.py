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
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
