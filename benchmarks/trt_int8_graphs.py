"""The graphs a TensorRT INT8 build parses, checked without a GPU: for every graph of an artifact, the
relative error against the FP32 graph (ONNX Runtime CPU, on calibration feeds of a GLUE task) and whether
it passes the strongly typed TensorRT 10.1 rules of tests/fake_tensorrt.py, for

- fp16:          the FP16 graph (FP32 I/O, LayerNorm in FP32): what trt-fp16 parses;
- int8 (old):    ORT Q/DQ over the FP32 graph with ORT's default INT32 bias quantization (before issue 23);
- int8 over fp16: the same Q/DQ without bias quantization, converted to FP16: what trt-int8 parses now.

ORT emulates the Q/DQ arithmetic, so the error is the quantization's, not TensorRT's kernels'.

    python benchmarks/trt_int8_graphs.py ART --task cola [--calib-size 128] [--out benchmarks/results]

Writes trt_int8_graphs.json / .md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the TensorRT rules live with the fake TensorRT


def measure(art: Path, task: str, calib_size: int) -> dict[str, dict[str, Any]]:
    from fake_tensorrt import tensorrt_rules
    from nanotrt.calibration import quantize as q
    from nanotrt.calibration.readers import collect
    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(art)
    calib = collect(m, read_split(task, "train", None, limit=calib_size), task)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for unit in m.schedule("fp32").names():
            src, names = m.verify(unit), [i["name"] for i in m.graphs[unit]["inputs"]]
            batches = calib.batches(unit)
            graphs = {"fp16": Path(tmp) / f"{unit}.fp16.onnx"}
            q.convert_fp16(src, graphs["fp16"])
            for label, bias in (("int8 (old)", True), ("int8 over fp16", False)):
                dst = Path(tmp) / f"{unit}.{bias}.onnx"
                q.TRT_QDQ_OPTIONS["QuantizeBias"] = bias
                if not q.quantize_static_qdq(src, dst, batches, names, for_tensorrt=True):
                    continue  # no GEMM (the embeddings): built as FP16
                if not bias:
                    q.convert_fp16(dst, dst)
                graphs[label] = dst
            q.TRT_QDQ_OPTIONS["QuantizeBias"] = False
            rows[unit] = {label: {"rel_error": q.relative_error(src, path, batches),
                                  "tensorrt_rules": tensorrt_rules(path)[:2]} for label, path in graphs.items()}
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    labels = ["fp16", "int8 (old)", "int8 over fp16"]
    lines = ["# TensorRT INT8 graphs, checked on the CPU", "",
             f"`{report['command']}` (load average {report['loadavg']}); {report['artifact']}, "
             f"{report['calib_size']} {report['task']} train sentences.", "",
             "Relative L2 error of the first output vs the FP32 graph (ORT CPU, calibration feeds); "
             "'refused' = fails the strongly typed TensorRT 10.1 rules of tests/fake_tensorrt.py.", "",
             "| graph | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for unit, row in report["graphs"].items():
        cells = []
        for label in labels:
            r = row.get(label)
            cells.append("—" if r is None else f"{r['rel_error']:.4f}" + (" refused" if r["tensorrt_rules"] else ""))
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    refused = sorted({r["tensorrt_rules"][0] for row in report["graphs"].values() for r in row.values()
                      if r["tensorrt_rules"]})
    lines += ["", "First refusals: " + ("; ".join(f"`{x}`" for x in refused[:3]) or "none")]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--task", default="cola")
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "loadavg": [round(x, 2) for x in os.getloadavg()], "artifact": f"{args.artifact.parent.name}/{args.artifact.name}",
              "task": args.task, "calib_size": args.calib_size,
              "graphs": measure(args.artifact, args.task, args.calib_size)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trt_int8_graphs.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "trt_int8_graphs.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
