"""`nanotrt bench`: accuracy / speed / memory of early exit against the baselines, on the same inputs.

Every row runs in its own child process, one after another, so that each row's peak RSS is its own
(a runtime row never has torch imported) and rows do not share warm caches. Each child tokenizes the dev
split with the artifact's tokenizer.json, so all rows see identical token ids.

Rows: 1 torch-full (eager, full depth) · 2 torch-exit (the PABEE/DeeBERT reference loop, batch 1) ·
3 ort-whole (one ONNX graph, all resident; FP32, and dynamic INT8 as the INT8 baseline) · 4 nanotrt-full
(per-layer, all resident, no exit; fused variant too when built) · 5 nanotrt-exit fp32 / int8 at the chosen
memory budget · 6 the same exit streamed under a 2-layer budget, batch 1 · 7 the same over the whole dev set
in block mode (layer-major). Rows that need what the artifact lacks (checkpoint, one-graph export, a built
variant) are skipped and listed. Each row carries a ``key`` (stable, for lookups) besides its display name.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.pipeline.glue import Task, compute_metrics, get_task, predictions_from_logits, read_split
from nanotrt.runtime.errors import NanotrtError

WARMUP = 5


@dataclass
class RowSpec:
    name: str
    kind: str  # torch-full | torch-exit | ort-whole | runner
    artifact: str
    task: str
    key: str = ""  # stable id the report looks rows up by ("torch-full", "ort-whole-int8", ...)
    graph: str = "whole"  # ort-whole: which one-graph model (FP32 "whole" or its dynamic INT8 build)
    data_dir: str | None = None
    limit: int | None = None
    exit: str = "none"  # runner rows: "default" = the variant's own rule (a plan's, else the calibrated one)
    variant: str | None = None  # runner: None = the artifact's best variant at ``precision`` (the runner's rule)
    precision: str = "fp32"
    budget: str = "all"
    batch_size: int = 1
    prefetch: bool = True
    threads: int | None = None
    sweep: list[str] = field(default_factory=list)  # runner only: several exit specs in one child
    mode: str = "latency"  # runner only: block = the whole split through Runner.predict(mode="block")


# --------------------------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """This process's own peak RSS. VmHWM belongs to the current address space; ru_maxrss survives
    execve on Linux, so a child started by a large parent would report the parent's peak."""
    from nanotrt.runtime.profile import proc_status_bytes

    return proc_status_bytes("VmHWM") or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _encode_all(spec: RowSpec) -> tuple[Task, Any, list[dict[str, np.ndarray]], np.ndarray]:
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.tokenize import Tokenizer

    task = get_task(spec.task)
    split = read_split(task, "dev", spec.data_dir, limit=spec.limit)
    m = Manifest.load(spec.artifact)
    tok = Tokenizer.from_manifest(m)
    bs, labels = spec.batch_size, split.labels
    texts, pairs = split.texts, split.pairs
    if bs > 1:  # batches of similar length pad less (the same batches for every row, baselines included)
        lengths = [len(tok([t], [p] if pairs else None)["input_ids"][0]) for t, p in zip(texts, pairs or texts, strict=True)]
        order = np.argsort(lengths, kind="stable")
        texts, labels = [texts[i] for i in order], labels[order]
        pairs = [pairs[i] for i in order] if pairs else None
    batches = [tok(texts[i:i + bs], pairs[i:i + bs] if pairs else None) for i in range(0, len(texts), bs)]
    return task, m, batches, labels


def _summary(task: Task, labels: np.ndarray, logits: np.ndarray, layers: np.ndarray, lat: list[float],
             wall: float, n_layers: int, extra: dict[str, Any]) -> dict[str, Any]:
    metrics = compute_metrics(task, labels, predictions_from_logits(task, logits))
    lat_ms = np.array(lat) * 1000
    return {"metrics": metrics, "metric": metrics[task.main_metric], "avg_exit_layer": float(np.mean(layers)),
            "layer_speedup": n_layers / float(np.mean(layers)), "p50_ms": float(np.percentile(lat_ms, 50)),
            "p95_ms": float(np.percentile(lat_ms, 95)), "throughput": len(labels) / wall, "wall_s": wall,
            "peak_rss_bytes": peak_rss_bytes(), "examples": len(labels), **extra}


def _time_batches(batches: list[dict[str, np.ndarray]], fn: Any) -> tuple[list[Any], list[float], float]:
    for b in batches[:WARMUP]:
        fn(b)
    outs, lat = [], []
    t0 = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        outs.append(fn(b))
        dt = time.perf_counter() - t
        lat += [dt / len(b["input_ids"])] * len(b["input_ids"])  # per example
    return outs, lat, time.perf_counter() - t0


def run_row(spec: RowSpec) -> dict[str, Any] | list[dict[str, Any]]:
    task, m, batches, labels = _encode_all(spec)
    n = m.num_layers
    if spec.kind in ("torch-full", "torch-exit"):
        import torch
        from nanotrt.pipeline.model import load_model
        from nanotrt.pipeline.reference import reference_exit
        from nanotrt.runtime.exits import parse_exit

        if spec.threads:
            torch.set_num_threads(spec.threads)
        model = load_model(Path(spec.artifact) / m.data["checkpoint"]).eval()
        policy = parse_exit(spec.exit, m.task_type)
        t = torch.from_numpy

        @torch.inference_mode()
        def full(b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            ids, mask, tt = t(b["input_ids"]), t(b["attention_mask"]), t(b["token_type_ids"])
            h = model.embed(ids, tt)
            for i in range(n):
                h = model.layer(i, h, mask)
            return model.ramps[-1](h, mask).numpy(), np.full(len(ids), n)

        def exit_(b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            lg, layer = reference_exit(model, t(b["input_ids"]), t(b["attention_mask"]), t(b["token_type_ids"]), policy)
            return lg.numpy()[None], np.array([layer])

        outs, lat, wall = _time_batches(batches, full if spec.kind == "torch-full" else exit_)
        logits, layers = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        return _summary(task, labels, logits, layers, lat, wall, n, {"precision": "fp32", "variant": "checkpoint",
                                                                    "torch_imported": True})

    if spec.kind == "ort-whole":
        import onnxruntime as ort
        from nanotrt.engines.onnxruntime import session_options

        so = session_options(ort, spec.threads)
        sess = ort.InferenceSession(str(m.verify(spec.graph)), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        outs, lat, wall = _time_batches(batches, lambda b: sess.run(None, {k: b[k] for k in names})[0])
        logits = np.concatenate(outs)
        entry = m.graphs[spec.graph]
        return _summary(task, labels, logits, np.full(len(logits), n), lat, wall, n,
                        {"engine_peak_bytes": int(entry["bytes"]), "precision": entry["precision"], "variant": spec.graph,
                         "torch_imported": "torch" in sys.modules})

    from nanotrt.runtime.backend import get_backend
    from nanotrt.runtime.runner import Runner, RunStats

    if spec.mode == "block":
        return _block_row(spec, task, m)
    results = []
    for exit_spec in spec.sweep or [spec.exit]:
        backend = get_backend("onnxruntime", threads=spec.threads)
        with Runner(m, backend, memory_budget=spec.budget, exit=None if exit_spec == "default" else exit_spec,
                    variant=spec.variant, prefetch=spec.prefetch, precision=spec.precision, own_backend=True) as runner:
            stats = RunStats()
            outs, lat, wall = _time_batches(batches, lambda b, r=runner, s=stats: r.run_encoded(b, s)[:2])
            logits, layers = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
            cache = runner.cache.stats
            results.append(_summary(task, labels, logits, layers, lat, wall, n, {
                **_runner_info(runner), "budget": runner.describe_budget(),
                "precision": m.data["variants"][runner.variant].get("precision", "fp32"),
                "engine_peak_bytes": cache.peak_resident_bytes, "activation_peak_bytes": cache.peak_activation_bytes,
                "load_s": cache.load_s, "wait_s": cache.wait_s, "loads": cache.loads,
                "torch_imported": "torch" in sys.modules}))
    return results if spec.sweep else results[0]


def _runner_info(runner: Any) -> dict[str, Any]:
    """What a runner row ran: variant, the exit rule and where it came from, the plan (predicted latency)."""
    return {"variant": runner.variant, "exit": runner.policy.spec, "exit_source": runner.exit_source,
            "plan": runner.describe_plan()}


def _block_row(spec: RowSpec, task: Task, m: Any) -> dict[str, Any]:
    """The whole split through one ``Runner.predict(mode="block")`` call: per-example latency is not
    defined in a layer-major block, so p50/p95 are the mean time per example. The split in its own order
    (``predict`` groups by length itself and answers in the caller's order)."""
    from nanotrt.runtime.backend import get_backend
    from nanotrt.runtime.runner import Runner

    split = read_split(task, "dev", spec.data_dir, limit=spec.limit)
    with Runner(m, get_backend("onnxruntime", threads=spec.threads), memory_budget=spec.budget,
                exit=None if spec.exit == "default" else spec.exit, variant=spec.variant, prefetch=spec.prefetch,
                precision=spec.precision, own_backend=True) as runner:
        runner.predict(split.texts[:WARMUP], split.pairs[:WARMUP] if split.pairs else None, spec.batch_size)
        t0 = time.perf_counter()
        res = runner.predict(split.texts, split.pairs, batch_size=spec.batch_size, mode="block")
        wall = time.perf_counter() - t0
        c = res.stats.cache
    lat = [wall / len(split)] * len(split)
    return _summary(task, split.labels, res.logits, res.exit_layers, lat, wall, m.num_layers, {
        **_runner_info(runner), "budget": runner.describe_budget(), "mode": res.stats.mode,
        "precision": m.data["variants"][runner.variant].get("precision", "fp32"),
        "blocks": res.stats.blocks, "max_block": res.stats.max_block, "engine_peak_bytes": c["peak_resident_bytes"],
        "activation_peak_bytes": c["peak_activation_bytes"], "load_s": c["load_s"], "wait_s": c["wait_s"],
        "loads": c["loads"], "torch_imported": "torch" in sys.modules})


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------

def run_child(spec: RowSpec, timeout: float = 3600) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec.__dict__, f)
        path = f.name
    try:
        p = subprocess.run([sys.executable, "-m", "nanotrt.pipeline.bench", path], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    finally:
        os.unlink(path)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise NanotrtError(f"bench row '{spec.name}' failed: {last}")
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    spec = RowSpec(**json.loads(Path(sys.argv[1]).read_text()))
    try:
        print(json.dumps(run_row(spec)))
    except NanotrtError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
