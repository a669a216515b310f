"""Peak process memory, latency and throughput of the streaming runner on a BERT-base-shaped model (12 layers,
H=768, random weights, real bert-base-uncased tokenizer), side by side in one run:

- batch 1 (latency mode): budgets all / 2 / 1 layers, prefetch on/off at 2 and 1 compute threads, FP32 and INT8;
  the session-per-swap variants (`ort-fp32`, `ort-int8`, fused) next to their swap variants (`*-swap`: one
  session per layer structure, weights mapped per swap, issue 21);
- many inputs (1000 SST-2 train sentences, micro-batches of 8): all resident vs a 2-layer budget in latency
  mode (every micro-batch walks every layer) and in block mode (layer-major), with the predictions compared;
- the demo MiniLM on CoLA dev (``--cola ART``, default the `nanotrt bench` cache when it exists): batch 1,
  `patience=3`, all resident vs a 2-layer budget, old and new swap path, predictions compared.

Each configuration runs in its own child process so its memory is its own: VmHWM (peak RSS) and the sampled
peaks of RssAnon (anonymous: what the kernel cannot reclaim) and RssFile (file-backed: mapped weights and
libraries, reclaimable), benchmarks/memstat.py.

    flock /tmp/nanotrt-cpu.lock python benchmarks/streaming_memory.py [--examples 20] [--many 1000] [--out benchmarks/results]

Writes streaming_memory.json and streaming_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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

    build(art, int8=True, calib_task="sst2", calib_size=64, fused=True, swap=True)  # a no-op when up to date
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
    from memstat import Peaks
    from nanotrt.pipeline.bench import peak_rss_bytes
    from nanotrt.runtime.runner import Runner

    rss0 = peak_rss_bytes()
    opts = {"threads": spec["threads"]} if spec.get("threads") else {}
    with Peaks() as mem, Runner.from_artifact(spec["artifact"], memory_budget=spec["budget"], prefetch=spec["prefetch"],
                                              variant=spec["variant"], exit=spec.get("exit"), **opts) as r:
        if spec["kind"] == "cola":
            out = cola(r, spec)
        elif spec["kind"] == "latency":
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
    return {**spec, **out, **mem.result(), "rss_after_imports": rss0, "peak_rss": peak_rss_bytes(),
            "peak_engine_bytes": st.peak_resident_bytes, "peak_activation_bytes": st.peak_activation_bytes,
            "peak_total_bytes": st.peak_total_bytes, "loads": st.loads, "load_s": st.load_s, "wait_s": st.wait_s,
            "sessions": sessions, "budget_bytes": r.budget}


def cola(r: object, spec: dict) -> dict:
    """CoLA dev at batch 1, one request at a time (the device answering one request): ex/s and predictions."""
    from nanotrt.pipeline.glue import read_split

    texts = read_split("cola", "dev").texts[: spec["examples"]]
    for t in texts[:5]:
        r.predict([t])  # type: ignore[attr-defined]
    logits, layers = [], []
    t0 = time.perf_counter()
    for t in texts:
        res = r.predict([t])  # type: ignore[attr-defined]
        logits.append(res.logits[0].tolist())
        layers.append(int(res.exit_layers[0]))
    wall = time.perf_counter() - t0
    return {"throughput": len(texts) / wall, "mean_ms": 1000 * wall / len(texts), "logits": logits,
            "exit_layers": layers}


LATENCY = [  # (variant, budget, prefetch, threads, torch imported)
    ("ort-fp32", "all", True, None, False), ("ort-fp32", "all", True, None, True),
    ("ort-fp32", "all", True, 1, False),
    ("ort-fp32", "2layers", True, None, False), ("ort-fp32", "2layers", False, None, False),
    ("ort-fp32", "2layers", True, 1, False), ("ort-fp32", "2layers", False, 1, False),
    ("ort-fp32", "1layer", True, None, False),
    ("ort-int8", "all", True, None, False), ("ort-int8", "2layers", True, None, False),
    # the swap path (issue 21) beside the rows above
    ("ort-fp32-swap", "all", True, None, False),
    ("ort-fp32-swap", "2layers", True, None, False), ("ort-fp32-swap", "2layers", False, None, False),
    ("ort-fp32-swap", "1layer", True, None, False),
    ("ort-fp32-fused", "all", True, None, False), ("ort-fp32-fused", "2layers", True, None, False),
    ("ort-fp32-fused-swap", "2layers", True, None, False),
    ("ort-int8-swap", "2layers", True, None, False),
]
MANY = [  # (variant, budget, mode, prefetch)
    ("ort-fp32", "all", "latency", True), ("ort-fp32", "2layers", "latency", True),
    ("ort-fp32", "2layers", "block", True),
    ("ort-fp32-swap", "2layers", "latency", True), ("ort-fp32-swap", "2layers", "block", True),
]
COLA = [  # (variant, budget, prefetch): INT8 fused is `nanotrt bench`'s best INT8 row
    ("ort-int8-fused", "all", True), ("ort-int8-fused", "2layers", True),
    ("ort-int8-fused-swap", "2layers", True), ("ort-int8-fused-swap", "2layers", False),
    ("ort-int8-fused-swap", "all", True),
]


def source(variant: str) -> str:
    """The session-per-swap variant a swap variant was made from (its all-resident row is the baseline)."""
    return variant.removesuffix("-swap")


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
    ap.add_argument("--cola", type=Path, default=None,
                    help="artifact for the CoLA section (default: a copy of the `nanotrt bench --task cola` demo, "
                         "swap_cost.demo_copy; skipped when there is none)")
    ap.add_argument("--cola-examples", type=int, default=1043)
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

    load0 = os.getloadavg()
    rows = []
    for workload in workloads():
        for variant, budget, prefetch, threads, with_torch in LATENCY:
            rows.append(run({"kind": "latency", "artifact": str(art), "budget": budget, "prefetch": prefetch,
                             "torch": with_torch, "threads": threads, "workload": workload, "examples": a.examples,
                             "variant": variant}))
            r = rows[-1]
            print(f"{workload[:5]} {variant:20s} {budget:8s} prefetch={prefetch!s:5s} threads={threads} "
                  f"torch={with_torch!s:5s} VmHWM {r['peak_rss'] / 1e6:7.1f} MB anon {r['peak_anon'] / 1e6:7.1f} MB "
                  f"mean {r['mean_ms']:7.2f} ms  loads {r['loads']}", flush=True)
    block_rows = []
    for variant, budget, mode, prefetch in MANY:
        block_rows.append(run({"kind": "many", "artifact": str(art), "budget": budget, "prefetch": prefetch,
                               "mode": mode, "variant": variant, "examples": a.many, "batch": a.batch}))
        r = block_rows[-1]
        print(f"many {variant:20s} {budget:8s} {mode:7s} prefetch={prefetch!s:5s} VmHWM {r['peak_rss'] / 1e6:7.1f} MB "
              f"{r['throughput']:6.1f} ex/s loads {r['loads']} blocks {r['blocks']}", flush=True)
    compare(block_rows, lambda r: r["variant"] == "ort-fp32" and r["budget"] == "all")
    cola_rows = []
    from swap_cost import demo_copy

    a.cola = a.cola or demo_copy()
    if a.cola is not None and a.cola.is_dir():
        from nanotrt.pipeline.build import build

        info = json.loads((a.cola / "manifest.json").read_text())["variants"]
        opts = info["ort-int8"].get("options", {})
        build(a.cola, int8=True, dynamic="ort-int8-dynamic" in info, fused=True, swap=True,
              **{k: opts[k] for k in ("calib_task", "calib_size", "calib_method", "int8_tolerance") if k in opts})
        for variant, budget, prefetch in COLA:
            cola_rows.append(run({"kind": "cola", "artifact": str(a.cola), "budget": budget, "prefetch": prefetch,
                                  "variant": variant, "examples": a.cola_examples, "exit": "patience=3"}))
            r = cola_rows[-1]
            print(f"cola {variant:20s} {budget:8s} prefetch={prefetch!s:5s} VmHWM {r['peak_rss'] / 1e6:7.1f} MB "
                  f"anon {r['peak_anon'] / 1e6:7.1f} MB {r['throughput']:6.1f} ex/s loads {r['loads']}", flush=True)
        compare(cola_rows, lambda r: r["budget"] == "all" and not r["variant"].endswith("-swap"))
    report = {"model": "BERT-base shape (12x768, random weights), bert-base-uncased tokenizer",
              "machine": machine_info(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
              "rows": rows, "many": block_rows, "cola": cola_rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "streaming_memory.json", report)
    (a.out / "streaming_memory.md").write_text(markdown(report, a))
    print(f"wrote {a.out / 'streaming_memory.md'}")


def compare(rows: list[dict], is_base: Callable[[dict], bool]) -> None:
    """Same predictions as the all-resident baseline row; the logits are then reduced to a checksum."""
    base = next(b for b in rows if is_base(b))
    for r in rows:
        r["max_abs_logit_diff"] = float(np.abs(np.array(r["logits"]) - np.array(base["logits"])).max())
        r["same_exit_layers"] = r["exit_layers"] == base["exit_layers"]
        r["same_labels"] = bool((np.array(r["logits"]).argmax(1) == np.array(base["logits"]).argmax(1)).all())
    for r in rows:
        r["logits_sum"] = float(np.sum(r.pop("logits")))
        r["avg_exit_layer"] = float(np.mean(r.pop("exit_layers")))


def mem_cells(r: dict, base: dict) -> str:
    """VmHWM | vs all | peak RssAnon | vs all | peak RssFile."""
    return (f"{r['peak_rss'] / 1e6:.1f} MB | {r['peak_rss'] / base['peak_rss']:.0%} | {r['peak_anon'] / 1e6:.1f} MB | "
            f"{r['peak_anon'] / base['peak_anon']:.0%} | {r['peak_file'] / 1e6:.1f} MB")


MEM_HEAD = "VmHWM | VmHWM vs all | peak RssAnon | anon vs all | peak RssFile"


def markdown(report: dict, a: argparse.Namespace) -> str:
    mi = report["machine"]
    load = f"load average {report['loadavg_start'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the end"
    lines = ["# Streaming runner: memory, latency and throughput (BERT-base shape; MiniLM on CoLA)", "",
             f"`flock /tmp/nanotrt-cpu.lock python benchmarks/streaming_memory.py --examples {a.examples} --many {a.many} "
             f"--batch {a.batch}`; {mi['cpu']}, {mi['cores']} cores, shared with other jobs ({load}). Each row is its "
             "own process. Memory: VmHWM is the process's peak RSS (anonymous + file-backed); peak RssAnon (heap, "
             "activations, copies of weights: what the kernel cannot reclaim) and peak RssFile (mapped weight files "
             "and libraries: clean pages the kernel drops under pressure) are sampled every 2 ms "
             "(benchmarks/memstat.py). `ort-fp32` / `ort-int8` are `nanotrt build` variants (offline-optimized "
             "graphs, weights as external data; a swap builds a session); `*-swap` are `nanotrt build --swap` "
             "variants (one session per layer structure, a swap maps the layer's weight file). Ratios compare with "
             "the all-resident row of the session variant the row is made from (`ort-fp32-swap`: `ort-fp32`; "
             "1 compute thread: the 1-thread all-resident row).", ""]
    for workload in workloads():
        sel = [r for r in report["rows"] if r["workload"] == workload]
        lines += [f"## Batch 1, {workload} (mean over {a.examples} examples)", "",
                  f"| variant | budget | prefetch | threads | torch imported | {MEM_HEAD} | engines peak | "
                  "activations peak | latency ms | vs all | loads | ms / load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            base = next(b for b in sel if b["budget"] == "all" and not b["torch"] and b["variant"] == source(r["variant"])
                        and b["threads"] == (r["threads"] if r["variant"] == "ort-fp32" else None))
            lines.append(f"| {r['variant']} | {r['budget']} | {r['prefetch']} | {r['threads'] or 'default'} | {r['torch']} | "
                         f"{mem_cells(r, base)} | {r['peak_engine_bytes'] / 1e6:.1f} MB | "
                         f"{r['peak_activation_bytes'] / 1e6:.1f} MB | {r['mean_ms']:.2f} | "
                         f"{r['mean_ms'] / base['mean_ms']:.2f}x | {r['loads']} | {1000 * r['load_s'] / max(r['loads'], 1):.2f} |")
        lines.append("")
    rows = report["many"]
    lines += [f"## {a.many} sentences (SST-2 train), micro-batches of {a.batch}", "",
              f"| variant | budget | mode | prefetch | {MEM_HEAD} | engines peak | activations peak | ex/s | "
              "throughput vs all | blocks (max examples) | loads | same labels / exit layers | max logit diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = next(b for b in rows if b["variant"] == "ort-fp32" and b["budget"] == "all")
    for r in rows:
        lines.append(f"| {r['variant']} | {r['budget']} | {r['mode']} | {r['prefetch']} | {mem_cells(r, base)} | "
                     f"{r['peak_engine_bytes'] / 1e6:.1f} MB | {r['peak_activation_bytes'] / 1e6:.1f} MB | "
                     f"{r['throughput']:.1f} | {r['throughput'] / base['throughput']:.2f}x | {r['blocks']} ({r['max_block']}) | "
                     f"{r['loads']} | {r['same_labels']} / {r['same_exit_layers']} | {r['max_abs_logit_diff']:.1e} |")
    if report["cola"]:
        rows = report["cola"]
        base = next(b for b in rows if b["budget"] == "all" and not b["variant"].endswith("-swap"))
        lines += ["", f"## Demo MiniLM-L6, CoLA dev ({len(rows) and a.cola_examples} sentences), batch 1, `patience=3`", "",
                  f"| variant | budget | prefetch | {MEM_HEAD} | engines peak | ex/s | latency ms | vs all | "
                  "avg exit layer | loads | same labels / exit layers | max logit diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['budget']} | {r['prefetch']} | {mem_cells(r, base)} | "
                         f"{r['peak_engine_bytes'] / 1e6:.1f} MB | {r['throughput']:.1f} | {r['mean_ms']:.3f} | "
                         f"{r['mean_ms'] / base['mean_ms']:.2f}x | {r['avg_exit_layer']:.2f} | {r['loads']} | "
                         f"{r['same_labels']} / {r['same_exit_layers']} | {r['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
