"""Layering rules that keep workers Django-free and the command line quick to start.

Each import check runs in a fresh interpreter (this pytest process has Django started already).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Imported by Dask workers: none of them may bring Django in.
WORKER_MODULES = ("appion.motioncorrection.outputs", "appion.motioncorrection.inputs",
                  "appion.motioncorrection.align", "appion.motioncorrection.calc.internal",
                  "appion.ctfestimation.outputs", "appion.ctfestimation.inputs", "appion.ctfestimation.estimate",
                  "appion.ctfestimation.calc.internal", "appion.base.io.movies", "appion.workflow.jobtypes")
HEAVY = ("django", "numpy", "scipy", "numba", "distributed", "dask", "pandas", "matplotlib")
ABOVE_BASE = ("appion.motioncorrection", "appion.ctfestimation", "appion.refine", "appion.loop", "appion.web",
              "appion.workflow")

_PROBE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    found[name] = sorted(m for m in %r if m in sys.modules)
print(json.dumps(found))
""" % (HEAVY,)


def _imported_after(*modules: str) -> dict[str, list[str]]:
    """For each module (imported in order, in a fresh interpreter): the heavy packages loaded so far."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]
    return json.loads(proc.stdout)


def _first_with(found: dict[str, list[str]], package: str) -> str | None:
    return next((name for name, loaded in found.items() if package in loaded), None)


def test_worker_modules_do_not_import_django():
    found = _imported_after(*WORKER_MODULES)
    assert _first_with(found, "django") is None, f"{_first_with(found, 'django')} imports Django"


def test_loop_worker_tasks_do_not_import_django():
    found = _imported_after("appion.loop.tasks")
    assert "django" not in found["appion.loop.tasks"]


def test_command_parsers_import_nothing_heavy():
    """What `appion --help` and every parser need: argparse and appion's light modules only."""
    probe = ("import json, sys\nfrom appion.cli import build_parser\nbuild_parser()\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]
    assert json.loads(proc.stdout) == []


def test_models_refuse_to_load_before_bootstrap():
    proc = subprocess.run([sys.executable, "-c", "import appion.base.db.models"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "RuntimeError: appion.base.db.bootstrap() must run before the models are imported")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module))
    return out


@pytest.mark.parametrize("path", sorted((REPO / "appion" / "base").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_base_imports_nothing_above_it(path):
    bad = [f"{path.relative_to(REPO)}:{line}: {module}" for line, module in _imports(path)
           if any(module == top or module.startswith(top + ".") for top in ABOVE_BASE)]
    assert not bad, "appion.base must not import the packages built on it: " + "; ".join(bad)
