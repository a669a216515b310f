"""Peak process RSS and latency of the streaming runner on a BERT-base-shaped model (12 layers, H=768,
random weights, real bert-base-uncased tokenizer) at budgets all / 4 / 2 / 1 layers, prefetch on/off,
side by side in one run. Each configuration runs in its own child process so its peak RSS is its own.

    python benchmarks/streaming_memory.py [--examples 40] [--out benchmarks/results]

Writes streaming_memory.json and streaming_memory.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_model(cache: Path) -> Path:
    """BERT-base shape, random weights, exported once (with the one-graph baseline) and cached; built to
    ort-fp32 / ort-int8 (calibrated on 64 SST-2 sentences) and their fused layer+ramp products."""
    art = cache / "artifact"
    m = json.loads((art / "manifest.json").read_text()) if (art / "manifest.json").is_file() else None
    if m is None or "whole" not in m["graphs"]:
        import torch
        from nanotrt.pipeline.export import export_model
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        hf = cache / "hf"
        cfg = AutoConfig.for_model("bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072, vocab_size=30522, num_labels=2)
        AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(hf))
        AutoTokenizer.from_pretrained(str(ROOT.parent / "shared/data/tokenizers/bert-base-uncased")).save_pretrained(str(hf))
        export_model(hf, art, include_checkpoint=False, whole=True)
    from nanotrt.pipeline.build import build

    build(art, int8=True, calib_task="sst2", calib_size=64, fused=True)  # a no-op when up to date
    return art


def workloads() -> dict[str, list[str]]:
    from nanotrt.pipeline.glue import read_split

    short = read_split("sst2", "dev").texts  # ~20 tokens
    long = [" ".join((t + " ") * 8 for t in short[i:i + 3]) for i in range(0, 300, 3)]  # truncated at 128
    return {"short (SST-2 dev, ~25 tokens)": short, "long (128 tokens)": long}


def child(spec: dict) -> dict:
    """One configuration; ``spec['torch']`` imports torch first to show what it costs in RSS."""
    if spec.get("torch"):
        import torch  # noqa: F401

    import numpy as np
    from nanotrt.pipeline.bench import peak_rss_bytes
    from nanotrt.runtime.runner import Runner

    rss0 = peak_rss_bytes()
    texts = workloads()[spec["workload"]][: spec["examples"]]
    with Runner.from_artifact(spec["artifact"], memory_budget=spec["budget"], prefetch=spec["prefetch"],
                              variant=spec["variant"]) as r:
        r.predict(texts[:2])  # warm-up: first loads, allocator growth
        lat = []
        t0 = time.perf_counter()
        for t in texts:
            s = time.perf_counter()
            r.predict([t])
            lat.append(time.perf_counter() - s)
        wall = time.perf_counter() - t0
        peak_batch1 = peak_rss_bytes()
        bt = time.perf_counter()
        r.predict(texts, batch_size=spec["batch"])
        batch_wall = time.perf_counter() - bt
        st = r.cache.stats
    return {**spec, "rss_after_imports": rss0, "peak_rss": peak_batch1,
            "peak_rss_with_batch": peak_rss_bytes(),
            "mean_ms": 1000 * wall / len(texts), "p50_ms": float(1000 * np.median(lat)),
            "batch_throughput": len(texts) / batch_wall, "peak_engine_bytes": st.peak_resident_bytes,
            "loads": st.loads, "load_s": st.load_s, "wait_s": st.wait_s, "budget_bytes": r.budget}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nanotrt" / "bert-base-random")
    ap.add_argument("--child", type=str, default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    art = make_model(a.cache)
    from nanotrt.pipeline.bench import machine_info
    from nanotrt.runtime.fsutil import write_json

    opt, exported = "ort-fp32", "fp32"
    configs = [("all", True, False, opt), ("all", True, True, opt), ("4layers", True, False, opt),
               ("4layers", False, False, opt), ("2layers", True, False, opt), ("2layers", False, False, opt),
               ("1layer", True, False, opt), ("1layer", False, False, opt),
               ("all", True, False, exported), ("2layers", True, False, exported)]
    rows = []
    for workload in workloads():
        for budget, prefetch, with_torch, variant in configs:
            spec = {"artifact": str(art), "budget": budget, "prefetch": prefetch, "torch": with_torch,
                    "workload": workload, "examples": a.examples, "batch": a.batch, "variant": variant}
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                               text=True, check=True)
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{workload[:5]} {variant:8s} {budget:8s} prefetch={prefetch!s:5s} torch={with_torch!s:5s} "
                  f"peak RSS {r['peak_rss'] / 1e6:7.1f} MB  mean {r['mean_ms']:7.2f} ms  "
                  f"batch{a.batch} {r['batch_throughput']:6.1f} ex/s  loads {r['loads']}", flush=True)
    report = {"model": "BERT-base shape (12x768, random weights), bert-base-uncased tokenizer",
              "machine": machine_info(), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "streaming_memory.json", report)
    lines = ["# Streaming runner: memory and latency (BERT-base shape)", "",
             f"`python benchmarks/streaming_memory.py --examples {a.examples}`; {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores. Each row is its own process; latency is batch 1 "
             f"(mean over {a.examples} examples after warm-up) and peak RSS is the peak of that batch-1 phase; "
             f"throughput is batch {a.batch} with the same budget (its own peak RSS in the JSON). "
             "`ort-fp32` is the `nanotrt build` variant (offline-optimized graphs, weights as external data); "
             "`fp32` the graphs as exported. RSS vs all and latency vs all compare with `ort-fp32`, budget all.", ""]
    for workload in workloads():
        sel = [r for r in rows if r["workload"] == workload]
        base = next(r for r in sel if r["budget"] == "all" and not r["torch"] and r["variant"] == opt)
        lines += [f"## {workload}", "", "| variant | budget | prefetch | torch imported | peak RSS | RSS vs all | "
                  "engines peak | latency ms | vs all | batch ex/s | loads | ms / load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            lines.append(f"| {r['variant']} | {r['budget']} | {r['prefetch']} | {r['torch']} | {r['peak_rss'] / 1e6:.1f} MB | "
                         f"{r['peak_rss'] / base['peak_rss']:.0%} | {r['peak_engine_bytes'] / 1e6:.1f} MB | "
                         f"{r['mean_ms']:.2f} | {r['mean_ms'] / base['mean_ms']:.2f}x | {r['batch_throughput']:.1f} | "
                         f"{r['loads']} | {1000 * r['load_s'] / max(r['loads'], 1):.1f} |")
        lines.append("")
    (a.out / "streaming_memory.md").write_text("\n".join(lines))
    print(f"wrote {a.out / 'streaming_memory.md'}")


if __name__ == "__main__":
    main()
