"""Microseconds per runner step, with the backend call and the runner's own Python apart (issue 20 §3).

Runs ``Runner.run_encoded`` on pre-tokenized single examples (batch 1, all resident, no exit, so every row
walks every step) and wraps the backend's ``run`` to time the engine calls on their own:

    runner Python per step = (wall per example - time inside backend.run) / steps per example

The backend's own per-call cost (ORT's Python wrapper and C++ dispatch, no compute) is measured on an Identity
graph. ``--label`` names the code measured (e.g. ``before`` / ``after``); results accumulate in one JSON.

    python benchmarks/step_overhead.py ART [ART ...] --label after [--variant V]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi there", "A somewhat longer sentence, with punctuation!",
         "It rains.", "Colorless green ideas sleep furiously."]
OUT = Path(__file__).parent / "results" / "step_overhead"


def measure(art: str, variant: str | None, repeats: int) -> dict[str, object]:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(art, exit="none", variant=variant) as r:
        encs = [r.tokenizer([t]) for t in TEXTS] * (repeats // len(TEXTS))
        real = r.backend.run
        clock = {"s": 0.0, "calls": 0}

        def timed(engine, feeds):  # noqa: ANN001, ANN202
            t = time.perf_counter()
            out = real(engine, feeds)
            clock["s"] += time.perf_counter() - t
            clock["calls"] += 1
            return out

        r.backend.run = timed  # type: ignore[method-assign]
        for e in encs[:50]:
            r.run_encoded(e)
        walls = []
        for _ in range(3):  # best of three passes: the machine may be shared
            clock.update(s=0.0, calls=0)
            t = time.perf_counter()
            for e in encs:
                r.run_encoded(e)
            walls.append((time.perf_counter() - t, clock["s"], clock["calls"]))
        wall, inside, calls = min(walls)
        n = len(encs)
        steps = calls / n
        return {"artifact": art, "variant": r.variant, "steps_per_example": steps, "us_per_example": 1e6 * wall / n,
                "us_backend_per_step": 1e6 * inside / calls, "us_runner_python_per_step": 1e6 * (wall - inside) / calls}


def identity_call_us(repeats: int = 2000) -> float:
    import tempfile

    import onnx
    import onnxruntime as ort

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", 32])
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    with tempfile.TemporaryDirectory() as d:
        onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]), f"{d}/id.onnx")
        from nanotrt.engines.onnxruntime import session_options  # the runners made the process-wide pool

        sess = ort.InferenceSession(f"{d}/id.onnx", session_options(ort), providers=["CPUExecutionProvider"])
    feeds = {"x": np.zeros((1, 10, 32), np.float32)}
    for _ in range(100):
        sess.run(None, feeds)
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, feeds)
    return 1e6 * (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--label", required=True)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--repeats", type=int, default=500)
    args = ap.parse_args()
    rows = [measure(a, args.variant, args.repeats) for a in args.artifacts]
    doc = json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").is_file() else {"runs": {}}
    doc["runs"][args.label] = {"rows": rows, "identity_call_us": identity_call_us(), "load_average": os.getloadavg(),
                               "date": time.strftime("%Y-%m-%d %H:%M")}
    from nanotrt.runtime.fsutil import atomic_file, write_json

    write_json(OUT.with_suffix(".json"), doc)
    lines = ["# Runner step overhead", "", "`python benchmarks/step_overhead.py ART... --label LABEL` (batch 1, all "
             "resident, no exit; best of three passes; runner Python = wall minus time inside backend.run, per step).",
             "", "| code | artifact | variant | steps/example | us/example | us in backend per step | us runner Python "
             "per step | ORT Identity call us | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for label, run in doc["runs"].items():
        for r in run["rows"]:
            lines.append(f"| {label} | {Path(r['artifact']).name} | {r['variant']} | {r['steps_per_example']:.0f} | "
                         f"{r['us_per_example']:.0f} | {r['us_backend_per_step']:.1f} | "
                         f"{r['us_runner_python_per_step']:.1f} | {run['identity_call_us']:.1f} | "
                         f"{run['load_average'][0]:.2f} |")
    with atomic_file(OUT.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
