"""The ablation grid as data: read grid.toml (or another file), expand each table into rows, pick a mode.

    grid = load_grid()                  # ablations/grid.toml
    grid.tables["scan_fusion"].rows     # [Row(variant="tiny", scan="es2d", ...), ...]
    grid.rows()                         # every distinct row of every table, in table order
    mode = grid.mode("quick")           # how each column is measured in the quick mode
    mode.selects("train", row)          # does this row get accuracy columns in this mode?
"""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evmamba.model import STAGE_LAYOUTS, VARIANTS

GRID_FILE = Path(__file__).with_name("grid.toml")
PAPER_FILE = Path(__file__).with_name("paper_numbers.toml")

SWITCHES = ("variant", "scan", "step", "conv_branch", "se", "stages")
DEFAULTS = {"variant": "tiny", "scan": "es2d", "step": 2, "conv_branch": True, "se": True, "stages": "released"}
TABLE_OPTIONS = ("name", "title", "question", "same", "ss2d_step")
MODES = ("quick", "full")
FILTERS = ("train", "speed", "memory", "erf")
MODE_KEYS = {
    "tasks": list, "train": dict, "seeds": list, "image_size": int, "train_images": int, "test_images": int,
    "steps": int, "batch_size": int, "lr": float, "min_lr": float, "warmup_steps": int, "weight_decay": float,
    "label_smoothing": float, "ema_decay": float, "bn_batches": int, "speed": dict, "speed_size": int,
    "speed_batch": int,
    "speed_repeats": int, "memory": dict, "memory_batch": int, "erf": dict, "erf_stage": int, "erf_size": int,
    "erf_inputs": int, "scaling_sizes": list, "scaling_batch": int, "scaling_repeats": int,
    "trained_erf_inputs": int,
}


@dataclass(frozen=True)
class Row:
    """One model design: the build_model switches."""

    variant: str = "tiny"
    scan: str = "es2d"
    step: int = 2
    conv_branch: bool = True
    se: bool = True
    stages: str = "released"

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in SWITCHES}

    def label(self) -> str:
        parts = [self.variant, self.scan.upper() + (f" p={self.step}" if self.scan == "es2d" else "")]
        parts.append(("conv" if self.conv_branch else "no conv") + ", " + ("gate" if self.se else "no gate"))
        if self.stages != "released":
            parts.append(self.stages)
        return " | ".join(parts)

    def slug(self) -> str:
        return "-".join([self.variant, self.scan + (str(self.step) if self.scan == "es2d" else ""),
                         "conv" if self.conv_branch else "noconv", "gate" if self.se else "nogate", self.stages])

    def matches(self, selection: dict) -> bool:
        """True when every switch named in `selection` (switch -> value or list of values) fits this row."""
        for key, allowed in selection.items():
            values = allowed if isinstance(allowed, list) else [allowed]
            if getattr(self, key) not in values:
                return False
        return True


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

    def selects(self, column: str, row: Row) -> bool:
        """Whether `row` gets the `column` measurement (train, speed, memory, erf) in this mode."""
        return row.matches(self.settings[column])

    def not_run(self) -> str:
        return "not run in --quick" if self.name == "quick" else "not run"


@dataclass
class Grid:
    tables: dict
    modes: dict
    source: str = field(default="")

    def rows(self) -> list[Row]:
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


def _check_switch(where: str, key: str, values):
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {key} must be a non-empty list of values, got {values!r}")
    valid = {"variant": list(VARIANTS), "scan": ["es2d", "ss2d"], "stages": list(STAGE_LAYOUTS)}
    for v in values:
        if key in valid and v not in valid[key]:
            raise ValueError(f"{where}: unknown {key} {v!r}; valid values are {', '.join(valid[key])}")
        if key in ("conv_branch", "se") and not isinstance(v, bool):
            raise ValueError(f"{where}: {key} values must be true or false, got {v!r}")
        if key == "step" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{where}: step values must be positive integers, got {v!r}")


def expand_table(spec: dict) -> Table:
    """Every combination of the listed switch values (unlisted switches at the released design's values)."""
    name = spec.get("name")
    if not name:
        raise ValueError("every [[table]] needs a name")
    where = f"table {name!r}"
    unknown = set(spec) - set(SWITCHES) - set(TABLE_OPTIONS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}; a table takes the switches "
                         f"{', '.join(SWITCHES)} and {', '.join(TABLE_OPTIONS)}")
    values = {}
    for key in SWITCHES:
        v = spec.get(key, [DEFAULTS[key]])
        _check_switch(where, key, v)
        values[key] = v
    same = spec.get("same", [])
    rows = []
    for combo in itertools.product(*values.values()):
        d = dict(zip(SWITCHES, combo))
        if same and len({d[k] for k in same}) > 1:
            continue
        if d["scan"] == "ss2d":
            d["step"] = spec.get("ss2d_step", DEFAULTS["step"])
        row = Row(**d)
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
            if switch not in SWITCHES:
                raise ValueError(f"[{name}] {key}: unknown switch {switch!r}; valid: {', '.join(SWITCHES)}")
            _check_switch(f"[{name}] {key}", switch, allowed if isinstance(allowed, list) else [allowed])
    from .tasks import TASKS
    for t in settings["tasks"]:
        if t not in TASKS:
            raise ValueError(f"[{name}] tasks: unknown task {t!r}; valid: {', '.join(TASKS)}")
    if len(settings["seeds"]) < 1:
        raise ValueError(f"[{name}] seeds: give at least one seed")
    return Mode(name, dict(settings))


def load_grid(path=None) -> Grid:
    path = Path(path) if path else GRID_FILE
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"grid file {path} is not valid TOML: {e}") from None
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


__all__ = ["DEFAULTS", "GRID_FILE", "Grid", "MODES", "Mode", "PAPER_FILE", "Row", "SWITCHES", "Table", "expand_table",
           "load_grid", "load_paper_numbers"]
