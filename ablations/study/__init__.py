"""The trained study, its own house: the tasks and their image cache, the difficulty ladder that picks the
study's task, the runs, the analysis of trained models, and the report.

    tasks.py        the procedural tasks (one registry for the study, the grid and the demo's samples)
    cache.py        their images, drawn once per (task, size, seed, chunk) and kept as uint8 on disk
    calibration.py  the long-range ladder: ES2D against the scan-free control, rung by rung
    runner.py       the study file (study.toml), its runs, and the statistics over seeds
    analysis.py     trained models: receptive fields, route contributions, test images
    report.py       tables, figures, excerpt and manifest (`python -m ablations study`)
"""
from .runner import (
    GLOBAL_CONTROL_SIGMAS,
    STUDY_FILE,
    TRAIN_KEYS,
    Design,
    Study,
    StudyMode,
    binomial_se,
    flat_tail,
    items,
    load_study,
    mean_std,
    paired_interval,
    run_study,
    summarise,
    t95,
)

__all__ = ["Design", "GLOBAL_CONTROL_SIGMAS", "STUDY_FILE", "Study", "StudyMode", "TRAIN_KEYS", "binomial_se",
           "flat_tail", "items", "load_study", "mean_std", "paired_interval", "run_study", "summarise", "t95"]
