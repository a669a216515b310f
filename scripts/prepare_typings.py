"""Prepare ./typings for mypy: tensorrt-stubs with the lines that do not parse fixed (so mypy can check our
TensorRT code without the uninstallable-here tensorrt wheel), and a ``nanotrt`` package of symlinks to the
repository's top-level folders (setuptools maps them under ``nanotrt`` at install time; mypy does not run
the editable-install import hook, so it needs the same tree on disk).

`pip install --no-deps tensorrt-stubs` ships tensorrt/ and tensorrt_bindings/ .pyi files with parameters
named `in` (a keyword) and a non-default parameter after defaults in `add_scale_nd`.
"""

from __future__ import annotations

import re
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "typings"


def main() -> int:
    # This venv's site-packages first, then any other on sys.path (a worktree venv that borrows a shared one).
    dirs = [Path(sysconfig.get_paths()["purelib"]), *(Path(p) for p in sys.path if p)]
    site = next((d for d in dirs if (d / "tensorrt_bindings" / "tensorrt.pyi").is_file()), dirs[0])
    if not (site / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        print("tensorrt-stubs not installed: pip install --no-deps tensorrt-stubs", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    for pkg in ("tensorrt", "tensorrt_bindings"):
        dst = OUT / pkg
        dst.mkdir(parents=True)
        for f in (site / pkg).glob("*.pyi"):
            text = f.read_text()
            text = re.sub(r"\bin: ", "in_: ", text)  # `in` is a keyword
            text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
            (dst / f.name).write_text(text)
    pkg = OUT / "nanotrt"
    pkg.mkdir()
    for f in (ROOT / "nanotrt").glob("*.py"):
        (pkg / f.name).symlink_to(f)
    for sub in ("runtime", "engines", "pipeline", "calibration"):
        (pkg / sub).symlink_to(ROOT / sub, target_is_directory=True)
    print(f"typings written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
