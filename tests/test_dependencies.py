"""What the code imports is what pyproject.toml declares: every third-party module that the package, the app,
the benchmarks, the notebooks and the tests import belongs to a distribution named in its dependencies or an
extra (requirements*.txt install those). A module that only something else pulls in today is not declared:
the next release of that something may drop it, and a fresh environment then fails where this one passed."""
import ast
import json
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).parent.parent
SOURCES = ["evmamba", "ablations", "webapp", "app.py", "benchmarks", "tests", "notebooks"]
# modules that some declared distribution provides under another name, where it may not be installed here
NOT_INSTALLED_HERE = {"mamba_ssm": "mamba-ssm", "selective_scan_cuda": "mamba-ssm"}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """The distributions pyproject.toml names: its dependencies and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {normalised(re.match(r"[A-Za-z0-9_.-]+", s).group()) for s in specs}


def _code(path: Path) -> list[str]:
    if path.suffix != ".ipynb":
        return [path.read_text()]
    cells = json.loads(path.read_text())["cells"]
    return ["\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]


def imports() -> dict[str, set[str]]:
    """{top-level module: the files that import it}, for import statements and pytest.importorskip("...")."""
    out: dict[str, set[str]] = {}
    for source in SOURCES:
        root = ROOT / source
        files = [root] if root.is_file() else sorted([*root.rglob("*.py"), *root.rglob("*.ipynb")])
        for path in files:
            where = str(path.relative_to(ROOT))
            for code in _code(path):
                for node in ast.walk(ast.parse(code)):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module]
                    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                          and node.args and isinstance(node.args[0], ast.Constant)):
                        names = [node.args[0].value]
                    for name in names:
                        out.setdefault(name.split(".")[0], set()).add(where)
    return out


def local_modules() -> set[str]:
    """Modules this repository holds itself: its packages, the app, and the helpers beside the tests."""
    folders = [ROOT, ROOT / "tests", ROOT / "tests" / "data", ROOT / "benchmarks"]
    return {p.stem for f in folders for p in f.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}


def undeclared() -> dict[str, list[str]]:
    """{module: files importing it} for each third-party module no declared distribution provides."""
    have, provides, local = declared(), packages_distributions(), local_modules()
    out = {}
    for module, files in imports().items():
        if module in sys.stdlib_module_names or module in local:
            continue
        dists = provides.get(module) or [NOT_INSTALLED_HERE.get(module, module)]  # not installed: its own name
        if not {normalised(d) for d in dists} & have:
            out[module] = sorted(files)
    return out


def test_every_imported_module_is_declared():
    missing = undeclared()
    assert not missing, "imported but declared by no extra in pyproject.toml (add their distributions): " + "; ".join(
        f"{m} (in {', '.join(f[:3])})" for m, f in sorted(missing.items()))


def test_the_check_sees_what_it_checks():
    found = imports()
    assert {"torch", "numba", "gradio", "gradio_client", "playwright", "nbclient"} <= set(found)
    assert "tests/test_serving.py" in found["requests"] and "evmamba" in local_modules()
