"""The ONNX Runtime settings behind the runtime, measured side by side on the BERT-base-shaped artifact of
streaming_memory.py (run that first), or on any artifact with ``--artifact`` (e.g. the demo MiniLM):

1. load and run time of one layer: graph as exported vs built (offline-optimized, external data), with and
   without weight prepacking; and the alternative swap design (one session per layer structure, each
   layer's weights read from a file and fed as inputs);
2. thread pools: per-layer runner, all resident, full depth, batch 1, against the one-graph model, with one
   pool per session (spinning on / off, 1 thread) or ORT's process-wide pool (spinning on / stopped after
   each run); each configuration in its own process (the global pool is per process);
3. per-call overhead: the same with the fused layer+ramp variant (one call per layer instead of two);
4. 2-layer-budget latency when the heap is trimmed on every swap vs only when the cache is cleared.

    python benchmarks/ort_load_options.py [--artifact ART] [--repeats 3]  ->  results/ort_load_options*.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
ART = Path.home() / ".cache" / "nanotrt" / "bert-base-random" / "artifact"

# name -> OrtBackend options (and whether the one-graph baseline shares the process pool)
POOLS: dict[str, dict[str, Any]] = {
    "per-session pools, spinning": {"thread_pool": "session", "spin": True},
    "per-session pools, no spinning": {"thread_pool": "session", "spin": False},
    "per-session, 1 thread each": {"thread_pool": "session", "spin": False, "threads": 1},
    "shared pool, spinning": {"thread_pool": "shared", "spin": True},
    "shared pool, spinning stopped after each run": {"thread_pool": "shared", "spin": False},
}


def layer_load_run(path: Path, optimized: bool, prepack: bool, repeats: int = 7) -> tuple[float, float]:
    import onnxruntime as ort

    feeds = {"hidden_states": np.random.default_rng(0).standard_normal((1, 128, 768)).astype(np.float32),
             "attention_mask": np.ones((1, 128), np.int64)}
    loads, runs = [], []
    for _ in range(repeats):
        so = ort.SessionOptions()
        so.enable_cpu_mem_arena = False
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        t = time.perf_counter()
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        loads.append(time.perf_counter() - t)
        s.run(None, feeds)
        t = time.perf_counter()
        s.run(None, feeds)
        runs.append(time.perf_counter() - t)
    return 1000 * float(np.median(loads)), 1000 * float(np.median(runs))


def weights_as_inputs(m: Any, layers: list[str], tmp: Path, repeats: int = 2) -> tuple[float, float]:
    """The design the issue proposed for swaps: one session for all layers of one structure, weights as graph
    inputs. Per swap: read the layer's weight bytes from its file (what a swap must move at least), run."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    def big(model: Any) -> list[Any]:
        return [i for i in model.graph.initializer if np.prod(i.dims) * 4 >= 1024]

    tmpl = onnx.load(str(m.path(layers[0])))
    moved = big(tmpl)
    names = [i.name for i in moved]
    for i in moved:
        tmpl.graph.input.append(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)))
    kept = [i for i in tmpl.graph.initializer if i.name not in set(names)]
    del tmpl.graph.initializer[:]
    tmpl.graph.initializer.extend(kept)
    onnx.save(tmpl, str(tmp / "template.onnx"))
    files: dict[str, list[tuple[Path, Any, list[int]]]] = {}
    for lay in layers:
        arrs = [numpy_helper.to_array(i) for i in big(onnx.load(str(m.path(lay))))]
        files[lay] = []
        for k, a in enumerate(arrs):
            f = tmp / f"{lay.replace('/', '_')}.{k}.bin"
            a.tofile(f)
            files[lay].append((f, a.dtype, list(a.shape)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(tmp / "template.onnx"), so, providers=["CPUExecutionProvider"])
    feeds = {"hidden_states": np.random.default_rng(0).standard_normal((1, 128, 768)).astype(np.float32),
             "attention_mask": np.ones((1, 128), np.int64)}
    reads, runs = [], []
    for _ in range(repeats):
        for lay in layers:
            t = time.perf_counter()
            w = {n: np.fromfile(f, dtype=dt).reshape(sh) for n, (f, dt, sh) in zip(names, files[lay], strict=True)}
            reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            sess.run(None, {**feeds, **w})
            runs.append(time.perf_counter() - t)
    return 1000 * float(np.median(reads)), 1000 * float(np.median(runs))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One thread-pool configuration in a fresh process: per-layer runner (unfused and fused) and the one
    graph, interleaved example by example so that a load spike from other jobs hits all of them alike."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import OrtBackend, session_options
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import Runner

    m = Manifest.load(spec["artifact"])
    opts = spec["options"]
    runners = {v: Runner(m, OrtBackend(**opts), variant=v) for v in spec["variants"]}
    encs = [next(iter(runners.values())).tokenizer([t]) for t in spec["texts"]]
    # The one graph under the same thread settings (the shared pool is the process's, so it uses it too).
    so = session_options(ort)
    shared = not so.use_per_session_threads
    if shared and not opts["spin"]:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    if not shared:
        so.intra_op_num_threads = opts.get("threads") or 0
        if not opts["spin"]:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(m.verify("whole")), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    fns = {v: (lambda e, r=r: r.run_encoded(e)) for v, r in runners.items()}
    fns["whole"] = lambda e: sess.run(None, {k: e[k] for k in names})
    for e in encs[:3]:
        for fn in fns.values():
            fn(e)
    total = dict.fromkeys(fns, 0.0)
    for e in encs:
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(e)
            total[k] += time.perf_counter() - t
    for r in runners.values():
        r.close()
    return {k: 1000 * v / len(encs) for k, v in total.items()}


def pool_table(art: Path, texts: list[str], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each configuration ``repeats`` times, interleaved (a load spike hits every configuration alike)."""
    man = json.loads((art / "manifest.json").read_text())
    variants = [v for v in ("ort-fp32", "ort-fp32-fused") if v in man["variants"]] or ["fp32"]
    out: dict[str, dict[str, list[float]]] = {k: {} for k in POOLS}
    env = {k: v for k, v in os.environ.items() if k != "NANOTRT_ORT_THREAD_POOL"} | {"TOKENIZERS_PARALLELISM": "false"}
    for _ in range(repeats):
        for name, options in POOLS.items():
            spec = {"artifact": str(art), "texts": texts, "options": options, "variants": variants}
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                               text=True, check=True, env=env)
            for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items():
                out[name].setdefault(k, []).append(v)
            print(name, {k: round(v[-1], 2) for k, v in out[name].items()}, flush=True)
    return out


def runner_latency(texts: list[str], budget: str, trim_per_swap: bool) -> float:
    import nanotrt.engines.onnxruntime as eo
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.backend import trim_heap
    from nanotrt.runtime.runner import Runner

    class Backend(eo.OrtBackend):
        def release(self, engine: eo.OrtEngine) -> None:
            super().release(engine)
            if trim_per_swap:
                trim_heap()

    with Runner(Manifest.load(ART), Backend(thread_pool="session"), memory_budget=budget, variant="ort-fp32",
                prefetch=False) as r:
        r.predict(texts[:2])
        t = time.perf_counter()
        for x in texts:
            r.predict([x])
        return 1000 * (time.perf_counter() - t) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, default=None, help="thread-pool table only, on this artifact")
    ap.add_argument("--task", default="cola", help="dev sentences of this task for --artifact")
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    import tempfile

    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine
    from streaming_memory import workloads

    if a.artifact:
        texts = read_split(a.task, "dev").texts[: a.examples]
        pools = pool_table(a.artifact, texts, a.repeats)
        res: dict[str, Any] = {"artifact": str(a.artifact), "task": a.task, "pools": pools, "machine": machine()}
        stem = ROOT / "benchmarks" / "results" / f"ort_thread_pools_{a.task}"
        write_json(stem.with_suffix(".json"), res)
        md = [f"# ORT thread pools: per-layer runner vs one graph ({a.task} dev, first {a.examples}, batch 1)", "",
              f"`python benchmarks/ort_load_options.py --artifact {a.artifact} --task {a.task}`; "
              f"{res['machine']['cpu']}, {res['machine']['cores']} cores, shared with other jobs.", ""]
        md += _pool_md(pools)
        stem.with_suffix(".md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    m = Manifest.load(ART)
    exported, built = m.verify("layer_03"), m.verify(m.schedule("ort-fp32").layers[3])
    work = workloads()
    long = next(w for k, w in work.items() if k.startswith("long"))
    short = next(w for k, w in work.items() if k.startswith("short"))
    with tempfile.TemporaryDirectory() as tmp:
        swap = weights_as_inputs(m, m.schedule("ort-fp32").layers[:4], Path(tmp))
    res = {
        "layer": {
            "exported, prepack": layer_load_run(exported, False, True),
            "built, prepack": layer_load_run(built, True, True),
            "built, no prepack (today's swap)": layer_load_run(built, True, False),
        },
        "weights_as_inputs": swap,
        "pools_long": pool_table(ART, long[:8], a.repeats),
        "pools_short": pool_table(ART, short[:20], a.repeats),
        "two_layer_ms": {"trim every swap": runner_latency(long[:6], "2layers", True),
                         "trim on clear": runner_latency(long[:6], "2layers", False)},
        "machine": machine(),
    }
    write_json(ROOT / "benchmarks" / "results" / "ort_load_options.json", res)
    lines = ["# ONNX Runtime settings (BERT-base shape, batch 1)", "",
             f"`python benchmarks/ort_load_options.py --repeats {a.repeats}`; {res['machine']['cpu']}, "
             f"{res['machine']['cores']} cores, shared with other jobs (medians; ratios within one repeat).", "",
             "## Swapping a layer (128 tokens)", "", "| layer graph | load ms | run ms |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.1f} | {v[1]:.1f} |" for k, v in res["layer"].items()]
    lines += [f"| one session per structure, weights fed as inputs (read from file per swap) | {swap[0]:.1f} | {swap[1]:.1f} |",
              "", "Swap cost = load + the run it makes slower. Session construction of a built graph without prepacking "
              "is cheaper than reading the layer's weight bytes into memory (ORT maps the external data), so the "
              "runtime keeps one session per swap.", ""]
    lines += ["## Thread pools, all resident, full depth (long: 128 tokens, 8 examples)", ""] + _pool_md(res["pools_long"])
    lines += ["", "## Thread pools, short inputs (SST-2 dev, ~25 tokens, 20 examples)", ""] + _pool_md(res["pools_short"])
    lines += ["", "## 2-layer budget, per-session pools, no prepack, 128 tokens", "", "| heap trim | ms / example |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["two_layer_ms"].items()]
    (ROOT / "benchmarks" / "results" / "ort_load_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _pool_md(pools: dict[str, dict[str, list[float]]]) -> list[str]:
    cols = list(next(iter(pools.values())))
    per_layer = [c for c in cols if c != "whole"]
    head = "| threads | " + " | ".join(f"{c} ms" for c in cols) + " | " + " | ".join(
        f"{c} / one graph" for c in per_layer) + " |"
    lines = [head, "|" + "---|" * (1 + len(cols) + len(per_layer))]
    for name, r in pools.items():
        med = {c: float(np.median(r[c])) for c in cols}
        ratio = {c: float(np.median(np.array(r[c]) / np.array(r["whole"]))) for c in per_layer}
        lines.append(f"| {name} | " + " | ".join(f"{med[c]:.2f}" for c in cols) + " | "
                     + " | ".join(f"{ratio[c]:.2f}x" for c in per_layer) + " |")
    return lines


if __name__ == "__main__":
    main()
