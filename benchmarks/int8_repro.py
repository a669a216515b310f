"""Is the demo's INT8 build reproducible? Rebuilds ort-int8 of the cached demo CoLA artifact twice (the
calibration batch order as a stable sort, and as numpy's default argsort as before), compares the graph
files byte for byte with the cached build, and evaluates the bench's INT8 row (patience=3, batch 1, CoLA
dev) on each. Writes benchmarks/results/int8_repro.json.

    flock /tmp/nanotrt-cpu.lock python benchmarks/int8_repro.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SRC = Path.home() / ".cache/nanotrt/minilm-cola/artifact"
OUT = Path(__file__).parent / "results" / "int8_repro.json"


def copy_without_int8(src: Path, dst: Path) -> None:
    """Hard-linked copy of the artifact minus its ort-int8 variant (build replaces files, never edits them)."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=lambda d, names: [n for n in names if n.startswith("ort-int8")])
    m = json.loads((src / "manifest.json").read_text())
    m["variants"].pop("ort-int8")
    m["graphs"] = {k: v for k, v in m["graphs"].items() if v.get("variant") != "ort-int8"}
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text(json.dumps(m))


def int8_state(art: Path) -> dict[str, Any]:
    m = json.loads((art / "manifest.json").read_text())
    info = m["variants"]["ort-int8"]
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((art / info["dir"]).iterdir())}
    return {"files": files, "kept_fp32": info.get("kept_fp32"), "max_rel_error": round(max(info["rel_error"].values()), 4)}


def bench_int8_row(art: Path) -> dict[str, float]:
    from nanotrt.pipeline.glue import compute_metrics, get_task, read_split
    from nanotrt.runtime.runner import Runner

    split = read_split("cola", "dev")
    with Runner.from_artifact(art, variant="ort-int8", exit="patience=3") as r:
        res = r.predict(split.texts, batch_size=1)
    mcc = compute_metrics(get_task("cola"), split.labels, res.label_ids)["mcc"]
    return {"mcc_x100": round(100 * mcc, 2), "avg_exit_layer": round(float(res.exit_layers.mean()), 3)}


def main() -> None:
    import nanotrt.calibration.readers as readers
    from nanotrt.pipeline.build import build
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine

    runs: dict[str, Any] = {"cached": {**int8_state(SRC), **bench_int8_row(SRC)}}
    stable = readers.batch_order
    numpy_default = lambda s: np.argsort([len(t) + len(p) for t, p in zip(s.texts, s.pairs or [""] * len(s), strict=True)])  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for name, order in (("rebuild, stable batch order", stable), ("rebuild, numpy default order", numpy_default)):
            art = Path(tmp) / name.replace(" ", "_").replace(",", "")
            copy_without_int8(SRC, art)
            readers.batch_order = order  # type: ignore[assignment]
            t = time.perf_counter()
            build(art, int8=True, calib_task="cola")
            runs[name] = {**int8_state(art), **bench_int8_row(art), "build_s": round(time.perf_counter() - t, 1)}
    readers.batch_order = stable
    ref = runs["cached"]["files"]
    for r in runs.values():
        r["identical_to_cached"] = r["files"] == ref
        r["files"] = len(r["files"])
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    write_json(OUT, {"artifact": str(SRC), "machine": machine(),
                     "int8_cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}),
                     "runs": runs, "date": time.strftime("%Y-%m-%d %H:%M")})
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
