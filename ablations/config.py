"""The ablation grid as data: read grid.toml (or another file), expand each table into rows, pick a mode.

    grid = load_grid()                  # ablations/grid.toml
    grid.tables["scan_fusion"].rows     # [ModelConfig(variant="tiny", scan="es2d", ...), ...]
    grid.rows()                         # every distinct row of every table, in table order
    mode = grid.mode("quick")           # how each column is measured in the quick mode
    mode.selects("train", row)          # does this row get accuracy columns in this mode?

A row is an evmamba.ModelConfig: a table may list values for any of its fields, and every field it does
not list keeps the released design's value; a field that does not apply to a row's design (ES2D's step in
an SS2D row) takes its default, so such rows are not repeated.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evmamba.model import ModelConfig

GRID_FILE = Path(__file__).with_name("grid.toml")
DEMO_GRID_FILE = Path(__file__).with_name("grid_demo.toml")  # one small table: the whole pipeline in a minute
PAPER_FILE = Path(__file__).with_name("paper_numbers.toml")

FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TABLE_OPTIONS = ("name", "title", "question", "same")
MODES = ("quick", "full")
FILTERS = ("train", "speed", "memory", "erf")
MODE_KEYS = {
    "tasks": list, "train": dict, "seeds": list, "image_size": int, "train_images": int, "test_images": int,
    "steps": int, "batch_size": int, "lr": float, "min_lr": float, "warmup_steps": int, "weight_decay": float,
    "label_smoothing": float, "ema_decay": float, "bn_batches": int, "speed": dict, "speed_size": int,
    "speed_batch": int, "speed_repeats": int, "memory": dict, "memory_batch": int, "erf": dict, "erf_stage": int,
    "erf_size": int, "erf_inputs": int, "scaling_sizes": list, "scaling_batch": int, "scaling_repeats": int,
    "trained_erf_inputs": int,
}


def design(**fields) -> ModelConfig:
    """The validated design with these fields (the others at the released design's values); fields that do
    not apply to it take their defaults."""
    return ModelConfig(**fields).settled()


def config_dict(config: ModelConfig) -> dict:
    """A row as plain JSON-able data (for hashing and files)."""
    d = dataclasses.asdict(config.validate())
    d["stages"] = list(d["stages"])
    return d


def _text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).lower().replace(" ", "")


def slug(config: ModelConfig) -> str:
    """A file-name key of a row: the variant, then each field that differs from the released design."""
    config, default = config.validate(), ModelConfig(variant=config.variant).validate()
    parts = [config.variant]
    for f in FIELDS[1:]:
        v = getattr(config, f)
        if v != getattr(default, f):
            parts.append(f"{f}-{config.layout_name if f == 'stages' else _text(v)}")
    return "_".join(parts)


def label(config: ModelConfig) -> str:
    """A row for people: its table columns (ModelConfig.shown), the ones that differ from the released design."""
    shown, released = config.shown(), ModelConfig(variant=config.variant).shown()
    parts = [str(shown.pop("variant"))] + [f"{k} {v}" for k, v in shown.items() if released.get(k) != v]
    return " | ".join(parts)


def matches(config: ModelConfig, selection: dict) -> bool:
    """True when every field named in `selection` (field -> value or list of values, values as a grid file
    writes them, e.g. a stage layout by name) fits `config`."""
    config = config.validate()
    for key, allowed in selection.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if not any(_same(config, key, v) for v in values):
            return False
    return True


def _same(config: ModelConfig, key: str, value) -> bool:
    try:
        return getattr(design(**{**config_dict(config), key: value}), key) == getattr(config, key)
    except ValueError:  # a value that makes no design with this row's other fields (an SS2D row's step 3)
        return False


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    question: str
    rows: tuple


@dataclass(frozen=True)
class Mode:
    name: str
    settings: dict

    def __getattr__(self, key):
        try:
            return self.settings[key]
        except KeyError:
            raise AttributeError(key) from None

    def selects(self, column: str, row: ModelConfig) -> bool:
        """Whether `row` gets the `column` measurement (train, speed, memory, erf) in this mode."""
        return matches(row, self.settings[column])

    def not_run(self) -> str:
        return "not run in --quick" if self.name == "quick" else "not run"


@dataclass
class Grid:
    tables: dict
    modes: dict
    source: str = field(default="")

    def rows(self) -> list[ModelConfig]:
        seen, out = set(), []
        for t in self.tables.values():
            for r in t.rows:
                if r not in seen:
                    seen.add(r)
                    out.append(r)
        return out

    def mode(self, name: str) -> Mode:
        if name not in self.modes:
            raise ValueError(f"unknown mode {name!r}: the grid defines {', '.join(self.modes)}")
        return self.modes[name]


def _check_values(where: str, key: str, values):
    """Each value of field `key` makes a valid design, or a ValueError that says where and why."""
    if key not in FIELDS:
        raise ValueError(f"{where}: unknown field {key!r}; a design's fields are {', '.join(FIELDS)}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {key} must be a non-empty list of values, got {values!r}")
    for v in values:
        try:
            design(**{key: v})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None


def expand_table(spec: dict) -> Table:
    """Every combination of the listed field values (unlisted fields at the released design's values)."""
    name = spec.get("name")
    if not name:
        raise ValueError("every [[table]] needs a name")
    where = f"table {name!r}"
    unknown = set(spec) - set(FIELDS) - set(TABLE_OPTIONS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}; a table takes a design's fields "
                         f"{', '.join(FIELDS)} and {', '.join(TABLE_OPTIONS)}")
    listed = {key: spec[key] for key in FIELDS if key in spec}
    for key, values in listed.items():
        _check_values(where, key, values)
    same = spec.get("same", [])
    rows = []
    for combo in itertools.product(*listed.values()):
        d = dict(zip(listed, combo))
        if same and len({d[k] for k in same}) > 1:
            continue
        try:
            row = design(**d)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if row not in rows:
            rows.append(row)
    return Table(name, spec.get("title", name), spec.get("question", ""), tuple(rows))


def _check_mode(name: str, settings: dict) -> Mode:
    missing = [k for k in MODE_KEYS if k not in settings]
    unknown = [k for k in settings if k not in MODE_KEYS]
    if missing or unknown:
        raise ValueError(f"[{name}]: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
    for key, kind in MODE_KEYS.items():
        v = settings[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else \
            isinstance(v, kind) and not isinstance(v, bool)
        if not ok:
            raise ValueError(f"[{name}] {key} must be a {kind.__name__}, got {v!r}")
    for key in FILTERS:
        for switch, allowed in settings[key].items():
            _check_values(f"[{name}] {key}", switch, allowed if isinstance(allowed, list) else [allowed])
    from .study.tasks import TASKS
    for t in settings["tasks"]:
        if t not in TASKS:
            raise ValueError(f"[{name}] tasks: unknown task {t!r}; valid: {', '.join(TASKS)}")
    if len(settings["seeds"]) < 1:
        raise ValueError(f"[{name}] seeds: give at least one seed")
    return Mode(name, dict(settings))


def read_toml(path: Path, what: str) -> dict:
    """The TOML file `path` as a dict, or a ValueError saying that the `what` file is missing or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid TOML: {e}") from None


def load_grid(path=None) -> Grid:
    path = Path(path) if path else GRID_FILE
    spec = read_toml(path, "grid")
    tables = {}
    for t in spec.get("table", []):
        table = expand_table(t)
        if table.name in tables:
            raise ValueError(f"two tables are named {table.name!r}")
        tables[table.name] = table
    if not tables:
        raise ValueError(f"{path} defines no [[table]]")
    modes = {m: _check_mode(m, spec[m]) for m in MODES if m in spec}
    return Grid(tables, modes, str(path))


def load_paper_numbers(path=None) -> dict:
    return tomllib.loads(Path(path or PAPER_FILE).read_text())


__all__ = ["DEMO_GRID_FILE", "FIELDS", "GRID_FILE", "Grid", "MODES", "Mode", "PAPER_FILE", "Table", "config_dict",
           "design", "expand_table", "label", "load_grid", "load_paper_numbers", "matches", "read_toml", "slug"]
