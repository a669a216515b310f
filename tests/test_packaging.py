"""Packaging promises: one `nanotrt` namespace, the device side independent of the offline side, no cycle
between packages, and a device import that never loads the heavy offline stack."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from nanotrt.extras import EXTRAS, INCLUDES, modules_of

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> package it installs as (pyproject.toml's package-dir)
PACKAGES = {"nanotrt": "nanotrt", "runtime": "nanotrt.runtime", "engines": "nanotrt.engines",
            "pipeline": "nanotrt.pipeline", "calibration": "nanotrt.calibration"}
DEVICE = ("nanotrt.runtime", "nanotrt.engines")
OFFLINE = ("nanotrt.pipeline", "nanotrt.calibration", "nanotrt.cli")
HEAVY = ("torch", "transformers", "onnx", "onnxscript", "polygraphy", "matplotlib", "scipy", "safetensors")
# Package layers, lowest first: a package may import only from layers below it (or itself).
LAYERS = ["nanotrt.runtime", "nanotrt.engines", "nanotrt.calibration", "nanotrt.pipeline", "nanotrt"]


# A module named in a string: importlib.import_module("nanotrt.x.y"), a registry's "nanotrt.x.y:Class"
# (only names of real modules count: "nanotrt.json" is a file).
MODULE_PATH = re.compile(r"nanotrt(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``: import statements, calls of
    importlib.import_module / __import__ with a literal name, and strings that are a nanotrt module path
    (lazy registries name modules that way, out of sight of import statements)."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for n in ast.walk(f)} - {id(tree)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _import_call(n)]
    named = {id(c.args[0]) for c in calls}  # their literal is counted once, as the call
    docstrings = {id(b[0].value) for b in [tree.body] + [f.body for f in ast.walk(tree) if isinstance(
        f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))] if b and isinstance(b[0], ast.Expr)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Call) and _import_call(node):
            out.append((node.args[0].value, id(node) not in lazy))  # type: ignore[attr-defined]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | named
              and MODULE_PATH.fullmatch(node.value) and node.value.split(":")[0] in _modules()):
            out.append((node.value.split(":")[0], False))
    return out


def _import_call(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return (name in ("import_module", "__import__") and bool(node.args) and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str))


def test_import_graph_sees_string_imports(tmp_path: Path) -> None:
    """The checks below would miss a module named in a string; this one shows they do not."""
    f = tmp_path / "m.py"
    f.write_text('"""nanotrt.pipeline.build"""\nimport importlib\n__import__("torch")\n'
                 'TABLE = {"torch": "nanotrt.pipeline.torch_backend:TorchBackend"}\n'
                 'def load():\n    return importlib.import_module("nanotrt.calibration.readers")\n')
    assert sorted(_imports(f)) == [("importlib", True), ("nanotrt.calibration.readers", False),
                                   ("nanotrt.pipeline.torch_backend", False), ("torch", True)]


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).glob("*.py"):
            mods[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return mods


def _package(module: str) -> str:
    return max((p for p in PACKAGES.values() if module == p or module.startswith(p + ".")), key=len, default="")


def test_pyproject_maps_the_folders_under_one_namespace() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {pkg: folder for folder, pkg in PACKAGES.items()}
    assert sorted(cfg["packages"]) == sorted(PACKAGES.values())


def test_device_modules_import_nothing_offline() -> None:
    bad = []
    for mod, path in _modules().items():
        if not mod.startswith(DEVICE):
            continue
        for imp, at_top in _imports(path):
            if imp.startswith(OFFLINE) or (at_top and imp.split(".")[0] in HEAVY):
                bad.append(f"{mod} imports {imp}")
    assert bad == []


def test_no_cycle_between_packages() -> None:
    """Every import (lazy ones included) goes down the layer list: runtime <- engines <- calibration
    <- pipeline <- nanotrt (CLI)."""
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = []
    for mod, path in _modules().items():
        src = _package(mod)
        for imp, _ in _imports(path):
            dst = _package(imp)
            if dst and dst != src and rank[dst] > rank[src]:
                upward.append(f"{mod} -> {imp}")
    assert upward == []


def test_offline_backend_registers_from_the_offline_side() -> None:
    """The runtime names no offline module: `torch` exists once nanotrt.pipeline is imported, and asking for
    it before says what to install and import; the device backends are there from `import nanotrt`."""
    code = (
        "from nanotrt.runtime.backend import backend_names, get_backend\n"
        "from nanotrt.runtime.errors import NanotrtError\n"
        "before = backend_names()\n"
        "try:\n    get_backend('torch')\nexcept NanotrtError as e:\n    print(e)\n"
        "import nanotrt.pipeline\n"
        "print(before, backend_names())\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    message, names = p.stdout.strip().splitlines()
    assert "'export' extra" in message and "import nanotrt.pipeline" in message
    assert names == "['onnxruntime', 'tensorrt'] ['onnxruntime', 'tensorrt', 'torch']"


def test_fresh_interpreter_device_import_loads_no_offline_stack() -> None:
    code = (
        "import sys\n"
        "import nanotrt, nanotrt.cli, nanotrt.runtime.runner, nanotrt.engines.onnxruntime, nanotrt.engines.tensorrt\n"
        "from nanotrt import Runner\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(('nanotrt.pipeline', 'nanotrt.calibration')))\n"
        "print(loaded)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_extras_table_matches_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    for extra, bases in INCLUDES.items():
        for base in bases:
            assert f"nanotrt[{base}]" in extras[extra]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.split(">")[0].split("=")[0].strip() in ("torch", "transformers", "onnx", "polygraphy", "matplotlib")
                   for d in core)
    assert "torch" in modules_of("demo") and "matplotlib" in modules_of("bench")


@pytest.mark.parametrize("command", [["export", "x", "-o", "y"], ["train", "--task", "cola", "--model", "x", "-o", "y"],
                                     ["build", "x"], ["bench", "--task", "cola"]])
def test_missing_extra_is_one_line(command: list[str], tmp_path: Path) -> None:
    """Simulate a core install: a `torch`/`onnx` that cannot be found (a blocking finder on sys.meta_path)."""
    boot = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'transformers', 'matplotlib', 'scipy'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in ('torch', 'onnx', 'transformers', 'matplotlib', 'scipy') else _real(n, *a)\n"
        "from nanotrt.cli import main\n"
        f"sys.argv = ['nanotrt', *{command!r}]\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nanotrt[" in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_predict_cli_on_committed_artifact() -> None:
    """What the core-only CI job runs: the console entry point on the committed tiny artifact."""
    from conftest import TINY_ARTIFACT

    p = subprocess.run([sys.executable, "-m", "nanotrt", "predict", str(TINY_ARTIFACT), "a good film", "it rains",
                        "--json", "--exit", "patience=1", "--memory-budget", "2layers"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a good film", "it rains"]
    assert all(r["label"] in ("negative", "positive") and 1 <= r["exit_layer"] <= 4 for r in rows)
