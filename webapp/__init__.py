"""The evmamba browser demo, in parts: settings (what the operator chose), weights (which checkpoints a web
user may name), models (the shared model cache), jobs (cost budget, time limit, cancelling, compute slots),
errors (exceptions as short messages), views (one handler per tab, calling evmamba and ablations) and
layout (the Gradio page). `app.py` at the repository's root starts it."""
