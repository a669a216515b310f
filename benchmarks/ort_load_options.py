"""The ONNX Runtime settings behind the streaming runtime, measured side by side on the BERT-base-shaped
artifact of streaming_memory.py (run that first):

1. load and run time of one layer: graph as exported vs built (offline-optimized, external data), with
   and without weight prepacking;
2. all-resident latency with intra-op spinning on vs off (every session has its own thread pool);
3. 2-layer-budget latency when the heap is trimmed on every swap vs only when the cache is cleared.

    python benchmarks/ort_load_options.py   ->  results/ort_load_options.{json,md}
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ART = Path.home() / ".cache" / "nanotrt" / "bert-base-random" / "artifact"


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


def runner_latency(texts: list[str], budget: str, spin: bool, trim_per_swap: bool) -> float:
    import nanotrt.engines.onnxruntime as eo
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.backend import trim_heap
    from nanotrt.runtime.runner import Runner

    class Backend(eo.OrtBackend):
        def release(self, engine: eo.OrtEngine) -> None:
            super().release(engine)
            if trim_per_swap:
                trim_heap()

    with Runner(Manifest.load(ART), Backend(spin=spin), memory_budget=budget, variant="ort-fp32",
                prefetch=False) as r:
        r.predict(texts[:2])
        t = time.perf_counter()
        for x in texts:
            r.predict([x])
        return 1000 * (time.perf_counter() - t) / len(texts)


def main() -> None:
    from nanotrt.pipeline.bench import machine_info
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import write_json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from streaming_memory import workloads

    m = Manifest.load(ART)
    exported, built = m.verify("layer_03"), m.verify(m.schedule("ort-fp32").layers[3])
    texts = next(w for k, w in workloads().items() if k.startswith("long"))[:10]
    res = {
        "layer": {
            "exported, prepack": layer_load_run(exported, False, True),
            "built, prepack": layer_load_run(built, True, True),
            "built, no prepack": layer_load_run(built, True, False),
        },
        "all_resident_ms": {"spinning": runner_latency(texts, "all", True, False),
                            "no spinning": runner_latency(texts, "all", False, False)},
        "two_layer_ms": {"trim every swap": runner_latency(texts, "2layers", False, True),
                         "trim on clear": runner_latency(texts, "2layers", False, False)},
        "machine": machine_info(),
    }
    write_json(ROOT / "benchmarks" / "results" / "ort_load_options.json", res)
    lines = ["# ONNX Runtime settings for streaming (BERT-base shape, 128 tokens, batch 1)", "",
             f"`python benchmarks/ort_load_options.py`; {res['machine']['cpu']}, {res['machine']['cores']} cores.", "",
             "| layer graph | load ms | run ms |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.1f} | {v[1]:.1f} |" for k, v in res["layer"].items()]
    lines += ["", "| runner, budget all | ms / example |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["all_resident_ms"].items()]
    lines += ["", "| runner, budget 2layers (no prepack, no spinning) | ms / example |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["two_layer_ms"].items()]
    (ROOT / "benchmarks" / "results" / "ort_load_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
