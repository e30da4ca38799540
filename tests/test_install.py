"""What a new machine installs: the requirements files only name pyproject.toml's extras (one list of
packages), and `python -m evmamba` runs on evmamba's own dependencies, without the app extra."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def requirement_lines(name):
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirement_files_install_the_projects_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert requirement_lines("requirements.txt") == ["torch>=2.4,<=2.13.0", "-e .[app]"]
    assert requirement_lines("requirements-dev.txt") == ["-r requirements.txt", "-e .[app,dev]"]
    assert requirement_lines("requirements-gpu.txt") == extras["gpu"]
    # what the tests import is declared in the dev extra
    for module in ("pytest", "pytest_xdist", "hypothesis", "gradio_client", "playwright", "nbclient", "nbformat",
                   "ipykernel", "ruff"):
        assert any(re.split(r"[<>=\[]", d)[0].replace("-", "_") == module for d in extras["dev"]), module


def test_command_line_runs_without_the_app_extra(tmp_path):
    # none of the app extra's packages importable (scikit-image's sample photographs among them: a test
    # pattern is used instead)
    blocked = ["gradio", "matplotlib", "plotly", "pandas", "captum", "skimage"]
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "evmamba", "--size", "64"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Top-5 for a generated test pattern (pip install scikit-image for a sample photograph)" in out.stdout
    assert "random weights: these predictions mean nothing" in out.stdout
