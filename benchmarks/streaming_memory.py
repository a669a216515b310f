"""Peak process RSS, latency and throughput of the streaming runner on a BERT-base-shaped model (12 layers,
H=768, random weights, real bert-base-uncased tokenizer), side by side in one run:

- batch 1 (latency mode): budgets all / 2 / 1 layers, prefetch on/off at 2 and 1 compute threads, FP32 and INT8;
- many inputs (1000 SST-2 train sentences, micro-batches of 8): all resident vs a 2-layer budget in latency
  mode (every micro-batch walks every layer) and in block mode (layer-major), with the predictions compared.

Each configuration runs in its own child process so its peak RSS is its own.

    python benchmarks/streaming_memory.py [--examples 20] [--many 1000] [--out benchmarks/results]

Writes streaming_memory.json and streaming_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


def many(n: int) -> list[str]:
    from nanotrt.pipeline.glue import read_split

    return read_split("sst2", "train", limit=n).texts


def child(spec: dict) -> dict:
    """One configuration; ``spec['torch']`` imports torch first to show what it costs in RSS."""
    if spec.get("torch"):
        import torch  # noqa: F401

    import numpy as np
    from nanotrt.pipeline.bench import peak_rss_bytes
    from nanotrt.runtime.runner import Runner

    rss0 = peak_rss_bytes()
    opts = {"threads": spec["threads"]} if spec.get("threads") else {}
    with Runner.from_artifact(spec["artifact"], memory_budget=spec["budget"], prefetch=spec["prefetch"],
                              variant=spec["variant"], **opts) as r:
        if spec["kind"] == "latency":
            texts = workloads()[spec["workload"]][: spec["examples"]]
            r.predict(texts[:2])  # warm-up: first loads, allocator growth
            lat = []
            t0 = time.perf_counter()
            for t in texts:
                s = time.perf_counter()
                r.predict([t])
                lat.append(time.perf_counter() - s)
            wall = time.perf_counter() - t0
            out = {"mean_ms": 1000 * wall / len(texts), "p50_ms": float(1000 * np.median(lat))}
        else:
            texts = many(spec["examples"])
            r.predict(texts[:16], batch_size=spec["batch"], mode=spec["mode"])
            t0 = time.perf_counter()
            res = r.predict(texts, batch_size=spec["batch"], mode=spec["mode"])
            wall = time.perf_counter() - t0
            out = {"throughput": len(texts) / wall, "mode": res.stats.mode, "blocks": res.stats.blocks,
                   "max_block": res.stats.max_block, "logits": res.logits.tolist(),
                   "exit_layers": res.exit_layers.tolist()}
        st = r.cache.stats
        sessions = getattr(r.backend, "sessions_created", None)
    return {**spec, **out, "rss_after_imports": rss0, "peak_rss": peak_rss_bytes(),
            "peak_engine_bytes": st.peak_resident_bytes, "peak_activation_bytes": st.peak_activation_bytes,
            "peak_total_bytes": st.peak_total_bytes, "loads": st.loads, "load_s": st.load_s, "wait_s": st.wait_s,
            "sessions": sessions, "budget_bytes": r.budget}


LATENCY = [  # (variant, budget, prefetch, threads, torch imported)
    ("ort-fp32", "all", True, None, False), ("ort-fp32", "all", True, None, True),
    ("ort-fp32", "all", True, 1, False),
    ("ort-fp32", "2layers", True, None, False), ("ort-fp32", "2layers", False, None, False),
    ("ort-fp32", "2layers", True, 1, False), ("ort-fp32", "2layers", False, 1, False),
    ("ort-fp32", "1layer", True, None, False),
    ("ort-int8", "all", True, None, False), ("ort-int8", "2layers", True, None, False),
]
MANY = [  # (variant, budget, mode, prefetch)
    ("ort-fp32", "all", "latency", True), ("ort-fp32", "2layers", "latency", True),
    ("ort-fp32", "2layers", "block", True),
]


def run(spec: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NANOTRT_ORT_THREAD_POOL"} | {"TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nanotrt" / "bert-base-random")
    ap.add_argument("--child", type=str, default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    art = make_model(a.cache)
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine

    rows = []
    for workload in workloads():
        for variant, budget, prefetch, threads, with_torch in LATENCY:
            rows.append(run({"kind": "latency", "artifact": str(art), "budget": budget, "prefetch": prefetch,
                             "torch": with_torch, "threads": threads, "workload": workload, "examples": a.examples,
                             "variant": variant}))
            r = rows[-1]
            print(f"{workload[:5]} {variant:8s} {budget:8s} prefetch={prefetch!s:5s} threads={threads} "
                  f"torch={with_torch!s:5s} peak RSS {r['peak_rss'] / 1e6:7.1f} MB  mean {r['mean_ms']:7.2f} ms  "
                  f"loads {r['loads']}", flush=True)
    block_rows = []
    for variant, budget, mode, prefetch in MANY:
        block_rows.append(run({"kind": "many", "artifact": str(art), "budget": budget, "prefetch": prefetch,
                               "mode": mode, "variant": variant, "examples": a.many, "batch": a.batch}))
        r = block_rows[-1]
        print(f"many {variant:8s} {budget:8s} {mode:7s} prefetch={prefetch!s:5s} peak RSS {r['peak_rss'] / 1e6:7.1f} MB "
              f"{r['throughput']:6.1f} ex/s loads {r['loads']} blocks {r['blocks']}", flush=True)
    for r in block_rows:  # same predictions as all-resident of the same variant
        base = next(b for b in block_rows if b["variant"] == r["variant"] and b["budget"] == "all")
        r["max_abs_logit_diff"] = float(np.abs(np.array(r["logits"]) - np.array(base["logits"])).max())
        r["same_exit_layers"] = r["exit_layers"] == base["exit_layers"]
        r["same_labels"] = bool((np.array(r["logits"]).argmax(1) == np.array(base["logits"]).argmax(1)).all())
    for r in block_rows:
        r["logits_sum"] = float(np.sum(r.pop("logits")))
        r["avg_exit_layer"] = float(np.mean(r.pop("exit_layers")))
    report = {"model": "BERT-base shape (12x768, random weights), bert-base-uncased tokenizer",
              "machine": machine(), "rows": rows, "many": block_rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "streaming_memory.json", report)
    (a.out / "streaming_memory.md").write_text(markdown(report, a))
    print(f"wrote {a.out / 'streaming_memory.md'}")


def markdown(report: dict, a: argparse.Namespace) -> str:
    mi = report["machine"]
    lines = ["# Streaming runner: memory, latency and throughput (BERT-base shape)", "",
             f"`python benchmarks/streaming_memory.py --examples {a.examples} --many {a.many} --batch {a.batch}`; "
             f"{mi['cpu']}, {mi['cores']} cores, shared with other jobs while measured. Each row is its own "
             "process; peak RSS is that process's VmHWM. `ort-fp32` / `ort-int8` are `nanotrt build` variants "
             "(offline-optimized graphs, weights as external data). Ratios compare with the all-resident row "
             "of the same variant (1 compute thread: with the 1-thread all-resident row).", ""]
    for workload in workloads():
        sel = [r for r in report["rows"] if r["workload"] == workload]
        lines += [f"## Batch 1, {workload} (mean over {a.examples} examples)", "",
                  "| variant | budget | prefetch | threads | torch imported | peak RSS | RSS vs all | engines peak | "
                  "activations peak | latency ms | vs all | loads | ms / load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            base = next(b for b in sel if b["budget"] == "all" and not b["torch"] and b["variant"] == r["variant"]
                        and b["threads"] == (r["threads"] if r["variant"] == "ort-fp32" else None))
            lines.append(f"| {r['variant']} | {r['budget']} | {r['prefetch']} | {r['threads'] or 'default'} | {r['torch']} | "
                         f"{r['peak_rss'] / 1e6:.1f} MB | {r['peak_rss'] / base['peak_rss']:.0%} | "
                         f"{r['peak_engine_bytes'] / 1e6:.1f} MB | {r['peak_activation_bytes'] / 1e6:.1f} MB | "
                         f"{r['mean_ms']:.2f} | {r['mean_ms'] / base['mean_ms']:.2f}x | {r['loads']} | "
                         f"{1000 * r['load_s'] / max(r['loads'], 1):.1f} |")
        lines.append("")
    rows = report["many"]
    lines += [f"## {a.many} sentences (SST-2 train), micro-batches of {a.batch}", "",
              "| variant | budget | mode | prefetch | peak RSS | RSS vs all | engines peak | activations peak | ex/s | "
              "throughput vs all | blocks (max examples) | loads | same labels / exit layers | max logit diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["variant"] == r["variant"] and b["budget"] == "all")
        lines.append(f"| {r['variant']} | {r['budget']} | {r['mode']} | {r['prefetch']} | {r['peak_rss'] / 1e6:.1f} MB | "
                     f"{r['peak_rss'] / base['peak_rss']:.0%} | {r['peak_engine_bytes'] / 1e6:.1f} MB | "
                     f"{r['peak_activation_bytes'] / 1e6:.1f} MB | {r['throughput']:.1f} | "
                     f"{r['throughput'] / base['throughput']:.2f}x | {r['blocks']} ({r['max_block']}) | {r['loads']} | "
                     f"{r['same_labels']} / {r['same_exit_layers']} | {r['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
