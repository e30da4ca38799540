"""Analyses of what the scan does: partitions, receptive fields, hidden attention, attributions, cost.

Every function returns data (arrays, DataFrames) or a figure; none saves, shows or prints."""
