"""The TensorRT checks of benchmarks/gpu_check.sh (run that script; this is its second half).

For every TensorRT variant built in ARTIFACT (trt-fp32 / trt-fp16 / trt-int8):
1. every plan against ONNX Runtime (CPU) on the very ONNX it was parsed from (``source_onnx``), at batch
   1/8/32 x seq 1/16/128 (within the plan's profile), on inputs the FP32 graphs produce from token ids;
2. the swap runtime under a 2-layer budget, prefetch on and off, over several batches: the outputs of the
   two must be equal bit for bit, and close to ONNX Runtime's FP32 per-layer runner;
3. deserialize time per plan, per-graph latency (batch 1 and 8 at seq 128), and peak device memory
   (cudaMemGetInfo sampled after every engine run) against the budget.
Writes gpu_check.json + gpu_check.md to --out; exits 1 if any check failed.

``--prereqs`` (step 0 of gpu_check.sh) checks, before any work, everything the steps need and names each
missing thing with its fix: the export extra (nanotrt build), TensorRT 10.1-11.x with a builder, Polygraphy
>= 0.50.3, cuda-python of the driver's CUDA major, free GPU memory, the artifact, the calibration data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.engines import tensorrt as te
from nanotrt.pipeline import trt_build
from nanotrt.pipeline.trt_build import BuildOptions
from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner

# Relative L2 error of a plan vs ORT on the same ONNX. FP32: TF32 is off, only summation order differs.
# FP16: both sides compute in FP16 but TensorRT fuses differently. INT8: TensorRT's INT8 GEMMs vs ORT's
# Q/DQ emulation of the same scales.
TOL = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}
E2E_ATOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.5}  # ramp logits vs the ORT FP32 runner
SHAPES = [(b, s) for b in (1, 8, 32) for s in (1, 16, 128)]
TEXTS = ["a short one", "a somewhat longer sentence to classify, with a clause or two in it", "third",
         "the movie was a delight from start to finish", "colorless green ideas sleep furiously",
         "he did n't went home", "is this a question?", "no"] * 3


def prerequisites(art: Path, calib_task: str, min_free_mb: int, data_dir: str | None = None) -> tuple[list[str], list[str]]:
    """(what is there, what is missing: one line each naming the fix), checked before any work."""
    from nanotrt.pipeline.glue import get_task, task_file

    from nanotrt.extras import require

    have: list[str] = []
    missing: list[str] = []

    def check(what: str, fn: Any) -> Any:
        try:
            return fn()
        except (NanotrtError, ImportError) as e:
            missing.append(f"{what}: {e}")
            return None

    check("export extra", lambda: require("export", "nanotrt build"))
    trt = check("TensorRT / Polygraphy", trt_build.require_builder)
    if trt is not None:
        have.append(f"TensorRT {trt.__version__}")
    cudart = check("cuda-python", te.load_cudart)
    if cudart is not None and check("cuda-python vs driver", lambda: te.check_cuda(cudart) or True):
        driver = int(te.cuda_check(cudart.cudaDriverGetVersion()))
        free, _ = te.cuda_check(cudart.cudaMemGetInfo())
        have.append(f"driver for CUDA {driver // 1000}.{driver % 1000 // 10}, {int(free) >> 20} MiB GPU memory free")
        if int(free) >> 20 < min_free_mb:
            missing.append(f"GPU memory: {int(free) >> 20} MiB free, the check needs {min_free_mb} MiB: stop other "
                           "GPU jobs (nvidia-smi lists them) or pass MIN_FREE_MB")
    check("artifact", lambda: Manifest.load(art))
    check("calibration data", lambda: task_file(get_task(calib_task), "train", data_dir))
    return have, missing


def feeds_for(m: Manifest, batch: int, seq: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every FP32 graph for random token ids of shape [batch, seq] (last row half padded):
    layer i sees what the FP32 embeddings and layers 0..i-1 produce."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    vocab = int(m.data["config"].get("vocab_size", 1000))
    ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if seq > 1:
        mask[-1, seq // 2:] = 0
    sched = m.schedule("fp32")
    table = m.word_table()
    base = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "inputs_embeds": np.ascontiguousarray(table[ids], dtype=np.float32)}
    so = session_options(ort)  # also on ORT's shared pool when the process has one

    def run(name: str, f: dict[str, np.ndarray]) -> np.ndarray:
        s = ort.InferenceSession(str(m.verify(name)), so, providers=["CPUExecutionProvider"])
        return s.run(None, {i.name: f[i.name] for i in s.get_inputs()})[0]

    out = {sched.embeddings: base}
    hidden = run(sched.embeddings, base)
    for lay, ramp in zip(sched.layers, sched.ramps, strict=True):
        out[lay] = {"hidden_states": hidden, "attention_mask": mask}
        hidden = run(lay, out[lay])
        out[ramp] = {"hidden_states": hidden, "attention_mask": mask}
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def check_plans(m: Manifest, variant: str, fails: list[str]) -> dict[str, Any]:
    """Every plan vs ORT on its source ONNX; deserialize time and latency per plan."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    info = m.data["variants"][variant]
    opts = BuildOptions.from_json(info["options"])
    assert opts.max_shape is not None
    fp32 = m.schedule("fp32")
    names = m.schedule(variant).names()
    unit_of = dict(zip(names, fp32.names(), strict=True))
    rng = np.random.default_rng(0)
    shapes = [(b, s) for b, s in SHAPES if b <= opts.max_shape[0] and s <= opts.max_shape[1]]
    feeds = {bs: feeds_for(m, *bs, rng) for bs in shapes}
    so = session_options(ort)  # also on ORT's shared pool when the process has one
    rows: dict[str, Any] = {}
    with te.TrtBackend() as be:
        be.reserve(m, names)
        for name in names:
            e = m.graphs[name]
            loads = []
            for _ in range(3):
                t = time.perf_counter()
                eng = be.load(m, name)
                loads.append(time.perf_counter() - t)
                be.release(eng)
            eng = be.load(m, name)
            ref = ort.InferenceSession(str((m.root / e["file"]).parent / e["source_onnx"]), so,
                                       providers=["CPUExecutionProvider"])
            errs = {}
            for bs in shapes:
                f = feeds[bs][unit_of[name]]
                r = ref.run(None, {i.name: f[i.name] for i in ref.get_inputs()})[0]
                errs[f"{bs[0]}x{bs[1]}"] = err = rel(be.run(eng, f)[eng.outputs[0]], r)
                if not err <= TOL[e["precision"]]:
                    fails.append(f"{name} at {bs[0]}x{bs[1]}: rel. error {err:.2e} vs ORT on {e['source_onnx']} "
                                 f"> {TOL[e['precision']]:.0e}")
            lat = {}
            for b in (1, 8):
                s = min(128, opts.max_shape[1])
                f = feeds_for(m, b, s, rng)[unit_of[name]] if (b, s) not in feeds else feeds[(b, s)][unit_of[name]]
                for _ in range(3):
                    be.run(eng, f)
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    be.run(eng, f)
                    times.append(time.perf_counter() - t)
                lat[f"{b}x{s}"] = statistics.median(times) * 1e3
            be.release(eng)
            rows[name] = {"precision": e["precision"], "plan_mb": e["bytes"] / 1e6, "scratch_mb": e["scratch_bytes"] / 1e6,
                          "deserialize_ms": statistics.median(loads) * 1e3, "latency_ms": lat, "rel_error_vs_ort": errs,
                          "rel_error_vs_fp32_at_build": e.get("rel_error")}
    return rows


def check_runner(m: Manifest, variant: str, fails: list[str]) -> dict[str, Any]:
    """The swap runtime under a 2-layer budget: prefetch on == off bit for bit; close to ORT FP32; peak
    device memory against the budget."""
    with Runner.from_artifact(m.root) as r:
        ref = r.predict(TEXTS, batch_size=8).ramp_logits
    prec = registry.get(variant).precision
    out: dict[str, Any] = {}
    logits = []
    for prefetch in (True, False):
        with Runner.from_artifact(m.root, backend="tensorrt", variant=variant, memory_budget="2layers",
                                  prefetch=prefetch) as r:
            cudart = r.backend.cudart  # type: ignore[attr-defined]
            free0 = int(te.cuda_check(cudart.cudaMemGetInfo())[0]) + r.reserved  # before the reservation
            low = [free0 - r.reserved]
            run = r.backend.run

            def sampled(engine: Any, feeds: dict[str, np.ndarray], run: Any = run, low: list[int] = low,
                        cudart: Any = cudart) -> Any:
                res = run(engine, feeds)
                low[0] = min(low[0], int(te.cuda_check(cudart.cudaMemGetInfo())[0]))
                return res

            r.backend.run = sampled  # type: ignore[method-assign]
            t = time.perf_counter()
            res = r.predict(TEXTS, batch_size=8)
            wall = time.perf_counter() - t
            peak = free0 - low[0]
            budget = r.budget or 0
            out[f"prefetch_{'on' if prefetch else 'off'}"] = {
                "wall_s": wall, "budget_mb": budget / 1e6, "reserved_mb": r.reserved / 1e6,
                "peak_device_mb": peak / 1e6, "loads": res.stats.cache["loads"],
                "layer_ms": [1e3 * x / max(1, -(-len(TEXTS) // 8)) for x in res.stats.layer_time_s]}
            # TensorRT keeps per-engine runtime state beyond the plan bytes; allow 25 % + 64 MiB over the budget.
            if peak > budget * 1.25 + (64 << 20):
                fails.append(f"{variant} prefetch={prefetch}: peak device memory {peak / 1e6:.0f} MB > budget "
                             f"{budget / 1e6:.0f} MB (+25 % + 64 MiB)")
        logits.append(res.ramp_logits)
    if not np.array_equal(logits[0], logits[1], equal_nan=True):
        fails.append(f"{variant}: prefetch on and off differ (max {np.nanmax(np.abs(logits[0] - logits[1])):.2e})")
    d = float(np.nanmax(np.abs(logits[0] - ref)))
    out["max_abs_diff_vs_ort_fp32"] = d
    if not d <= E2E_ATOL[prec]:
        fails.append(f"{variant}: runner logits differ from ORT FP32 by {d:.2e} > {E2E_ATOL[prec]}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# gpu_check: {report['device']} (TensorRT {report['tensorrt']})", "",
             f"Result: **{'PASS' if not report['failures'] else 'FAIL'}** ({len(report['failures'])} failure(s))", ""]
    for f in report["failures"]:
        lines.append(f"- FAIL {f}")
    for variant, v in report["variants"].items():
        lines += ["", f"## {variant}", "", "| graph | precision | plan MB | scratch MB | deserialize ms | "
                  "latency ms 1x128 / 8x128 | max rel. err vs ORT (same ONNX) |", "|---|---|---|---|---|---|---|"]
        for name, g in v["plans"].items():
            lat = " / ".join(f"{x:.3f}" for x in g["latency_ms"].values())
            lines.append(f"| {name} | {g['precision']} | {g['plan_mb']:.1f} | {g['scratch_mb']:.1f} | "
                         f"{g['deserialize_ms']:.1f} | {lat} | {max(g['rel_error_vs_ort'].values()):.1e} |")
        for k in ("prefetch_on", "prefetch_off"):
            rr = v["runner"][k]
            lines.append(f"\nRunner, 2-layer budget, {k.replace('_', ' ')}: {rr['wall_s']:.3f} s for {len(TEXTS)} "
                         f"texts, {rr['loads']} loads, peak device memory {rr['peak_device_mb']:.0f} MB vs budget "
                         f"{rr['budget_mb']:.0f} MB (of which scratch + I/O {rr['reserved_mb']:.0f} MB)")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--prereqs", action="store_true", help="only check the prerequisites (gpu_check.sh step 0)")
    ap.add_argument("--calib-task", default="cola")
    ap.add_argument("--min-free-mb", type=int, default=2048)
    args = ap.parse_args()
    if args.prereqs:
        have, missing = prerequisites(args.artifact, args.calib_task, args.min_free_mb)
        for line in missing:
            print("MISSING", line)
        print("prerequisites:", "; ".join(have) or "-", "" if not missing else f"({len(missing)} missing)")
        return 1 if missing else 0
    m = Manifest.load(args.artifact)
    trt = te.require_runtime()
    variants = [v for v in m.variants if registry.known(v) and registry.get(v).backend == "tensorrt"
                and registry.get(v).kind == "built"]  # plans of them run the same engines
    fails: list[str] = [] if variants else ["no built TensorRT variant in the artifact (nanotrt build --backend tensorrt)"]
    report: dict[str, Any] = {"device": platform.node(), "tensorrt": trt.__version__, "variants": {}}
    try:
        import subprocess

        report["device"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - the name is only a label
        pass
    for v in variants:
        report["variants"][v] = {"plans": check_plans(m, v, fails), "runner": check_runner(m, v, fails)}
    report["failures"] = fails
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(to_markdown(report))
    for f in fails:
        print("FAIL", f)
    print(f"gpu_check: {len(fails)} failure(s); report in {args.out / 'gpu_check.md'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
