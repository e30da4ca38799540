"""The model panel, made from ModelConfig's fields: one widget per design field (the fields tables show),
and handlers whose API parameters are those fields, so a field added to the model appears in the panel,
in every endpoint and in its checks without a line here.

    @takes_design                      # handler(config, *its own parameters)
    def measure_view(config, progress=gr.Progress()): ...

    @takes_model                       # handler(model, what, *its own parameters); adds weights, upload, seed
    def erf_view(model, what, level="stage", ...): ...
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect

import gradio as gr

from evmamba.checks import choice, flag
from evmamba.model import ModelConfig

from . import models
from . import weights as W
from .inputs import whole

DESIGN = [f for f in dataclasses.fields(ModelConfig) if "column" in f.metadata]
MODEL_EXTRA = ("weights", "weights_upload", "seed")


def _default(f):
    value = f.default
    if f.name == "stages":
        return ModelConfig().layout_name
    return value


def design_of(weights) -> list:
    """The design widgets' values for a weights choice: a study model's own design (so choosing it sets
    the panel), else unchanged."""
    trained = W.study_design(weights)
    if trained is None:
        return [gr.update() for _ in DESIGN]
    config = trained[0]
    return [gr.update(value=config.layout_name if f.name == "stages" else getattr(config, f.name)) for f in DESIGN]


def _options(f) -> list | None:
    chooser = f.metadata.get("choices")
    return list(chooser()) if chooser else None


def widgets(prefix: str = "") -> list:
    """One Gradio widget per design field, in field order (call inside a gr.Row)."""
    out = []
    for f in DESIGN:
        label = prefix + f.metadata["column"]
        options = _options(f)
        if options is not None:
            out.append(gr.Dropdown(options, value=_default(f), label=label, info=f.metadata.get("doc")))
        elif f.type == "bool":
            out.append(gr.Checkbox(value=f.default, label=label, info=f.metadata.get("doc")))
        elif "range" in f.metadata:
            low, high = f.metadata["range"]
            out.append(gr.Slider(low, high, value=f.default, step=1, label=label, info=f.metadata.get("doc")))
        else:
            out.append(gr.Number(value=f.default, precision=0, label=label, info=f.metadata.get("doc")))
    return out


def _value(f, value):
    """A web user's value of field f, checked as the widget allows (any case for choices)."""
    options = _options(f)
    if options is not None:
        if isinstance(value, str):
            value = next((o for o in options if o.lower() == value.lower()), value)
        return choice(value, f.name.replace("_", " "), options)
    if f.type == "bool":
        return flag(value, f.name)
    if "range" in f.metadata:
        return whole(value, f.name, *f.metadata["range"])
    return whole(value, f.name)


def design(values: dict) -> ModelConfig:
    """The ModelConfig of the panel's values (fields that do not apply to the design take their defaults)."""
    return ModelConfig(**{f.name: _value(f, values[f.name]) for f in DESIGN}).settled()


def _wrap(fn, extra: list[inspect.Parameter], make, default=_default, check=None):
    """A handler with the design fields, `extra` and fn's own parameters (after the ones `make` fills) as its
    signature (what Gradio names the API's parameters by), calling fn(*make(values, own parameters), **its
    own); `check` (values, own parameters) runs first, before anything is built."""
    own = list(inspect.signature(fn).parameters.values())[make.consumes:]
    fields = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default(f)) for f in DESIGN]
    signature = inspect.Signature(fields + extra + own)

    def split(args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments), {p.name: bound.arguments[p.name] for p in own}

    def prepare(values, rest):
        own_values = {k: v for k, v in rest.items() if k != "progress"}
        if check is not None:
            check(values, own_values)
        return make(values, own_values)

    if inspect.iscoroutinefunction(fn):
        async def handler(*args, **kwargs):
            values, rest = split(args, kwargs)
            context = contextvars.copy_context()  # building a model takes seconds: not on the event loop
            first = await asyncio.get_running_loop().run_in_executor(None, context.run, prepare, values, rest)
            return await fn(*first, **rest)
    else:
        def handler(*args, **kwargs):
            values, rest = split(args, kwargs)
            return fn(*prepare(values, rest), **rest)

    functools.update_wrapper(handler, fn)
    del handler.__wrapped__  # Gradio reads __signature__; inspect must not follow the wrapped function
    handler.__signature__ = signature
    return handler


def _maker(consumes):
    def decorate(make):
        make.consumes = consumes
        return make
    return decorate


@_maker(1)
def _design_only(values, _own):
    return (design(values),)


def _with_model(budget):
    @_maker(2)
    def make(values, own):
        config = design(values)
        chosen = W.resolve(values["weights"], values["weights_upload"])
        seed = whole(values["seed"], "seed", 0, 2**31 - 1)
        check = None if budget is None else (lambda planned, size: budget(planned, size=size, **own))
        return models.get(config, chosen, seed, check=check)
    return make


@_maker(1)
def _filters(values, _own):
    return ({f.name: values[f.name] for f in DESIGN if values[f.name] not in (None, "", "all")},)


def filter_widgets(tables: dict) -> list:
    """One dropdown per design field, "all" first, then the values that field's column takes in `tables`
    (the ablation tables as loaded), in field order."""
    out = []
    for f in DESIGN:
        column = f.metadata["column"]
        values = sorted({str(v) for df in tables.values() if column in df.columns for v in df[column]})
        out.append(gr.Dropdown(["all", *values], value="all", label=column))
    return out


def takes_filters(fn):
    """A handler fn(filters, ...) becomes one whose parameters are the design fields, each "all" by default;
    fn receives {field: value} for the fields given another value."""
    return _wrap(fn, [], _filters, default=lambda f: "all")


def takes_design(fn=None, *, budget=None):
    """A handler fn(config, ...) becomes one whose parameters are the design fields, then fn's own; budget as
    for takes_model."""
    if fn is None:
        return functools.partial(takes_design, budget=budget)
    check = None if budget is None else (lambda values, rest: budget(design(values), **rest))
    return _wrap(fn, [], _design_only, check=check)


def takes_model(fn=None, *, budget=None):
    """A handler fn(model, what, ...) becomes one whose parameters are the design fields, the weights
    choice (default: the first study model, see weights.default), an uploaded checkpoint and the seed of
    random weights, then fn's own. budget(config, size=input side, **fn's own parameters) is called before
    the model is built (to refuse a request over budget at no cost), on the design that will run: the one
    chosen, which the weights must fit (evmamba.factory.fit), and the input side the weights expect."""
    if fn is None:
        return functools.partial(takes_model, budget=budget)
    extra = [inspect.Parameter("weights", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=W.default()),
             inspect.Parameter("weights_upload", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
             inspect.Parameter("seed", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=0)]
    return _wrap(fn, extra, _with_model(budget))


__all__ = ["DESIGN", "MODEL_EXTRA", "design", "design_of", "takes_design", "takes_model", "widgets"]
