"""Exceptions become short messages: a problem with the input is shown to the user as it is (cut to
MAX_TEXT characters); anything unexpected is logged with its traceback and shown as one sentence. The
server keeps running either way."""
from __future__ import annotations

import functools
import inspect
import logging
import traceback

import gradio as gr
import torch

from evmamba.errors import CheckpointError

from .jobs import Stopped
from .settings import MAX_TEXT

log = logging.getLogger("evmamba.app")
EXPECTED = (ValueError, TypeError, CheckpointError, FileNotFoundError, IndexError, Stopped)


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters (a 100,000-character input is not echoed back)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 24] + f" ... ({len(text)} characters)"


def _message(fn_name: str, e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, EXPECTED):
        return gr.Error(cut(e), print_exception=False)
    if isinstance(e, torch.OutOfMemoryError):
        return gr.Error("out of memory: choose a smaller model, grid or fewer images", print_exception=False)
    log.error("unexpected error in %s:\n%s", fn_name, cut(traceback.format_exc(), 20 * MAX_TEXT))
    return gr.Error(cut(f"{type(e).__name__}: {e}. The server is still running: try other settings."),
                    print_exception=False)


def shows_errors(fn):
    """Wrap a handler (plain or async): its exceptions become gr.Error messages as the module says."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure becomes a message; the server must go on
                raise _message(fn.__name__, e) from None
        return run_async

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message; the server must go on
            raise _message(fn.__name__, e) from None
    return run


__all__ = ["cut", "shows_errors"]
