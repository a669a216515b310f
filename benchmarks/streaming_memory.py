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
from pathlib import Path
from typing import Any

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
    if spec["kind"] in SIDE_BY_SIDE:
        return SIDE_BY_SIDE[spec["kind"]](spec)
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


LATENCY = [  # (variant, budget, prefetch, threads, torch imported): one process each, for the memory columns
    ("ort-fp32", "all", True, None, False), ("ort-fp32", "2layers", True, None, False),
    ("ort-fp32-swap", "all", True, None, False),
    ("ort-fp32-swap", "2layers", True, None, False), ("ort-fp32-swap", "2layers", False, None, False),
    ("ort-fp32-fused-swap", "2layers", True, None, False),
    ("ort-int8", "all", True, None, False), ("ort-int8", "2layers", True, None, False),
    ("ort-int8-swap", "2layers", True, None, False),
]


# --- side by side: every configuration in ONE process, examples interleaved round-robin, so that load from other
# jobs on a shared machine hits all of them alike (the ratios come from here; memory from one process per row) ---

def _runners(spec: dict) -> dict[str, Any]:
    from nanotrt.runtime.runner import Runner

    opts = {"threads": spec["threads"]} if spec.get("threads") else {}
    out = {}
    for c in spec["configs"]:  # (variant, budget[, mode or Runner options])
        extra = c[2] if len(c) > 2 and isinstance(c[2], dict) else {}
        label = f"{c[0]} @ {c[1]}" + (f" ({c[2]})" if len(c) > 2 and not extra else "")
        label += "".join(f", {k}={v}" for k, v in extra.items())
        out[label] = Runner.from_artifact(spec["artifact"], memory_budget=c[1], variant=c[0], exit=spec.get("exit"),
                                          **opts, **extra)
    return out


def _agree(out: dict[str, dict], logits: dict[str, list], layers: dict[str, list], base: str) -> dict[str, dict]:
    """Same predictions as the group's first (all-resident) configuration?"""
    ref, ref_layers = np.array(logits[base]), layers[base]
    for k, o in out.items():
        got = np.array(logits[k])
        o.update(max_abs_logit_diff=float(np.abs(got - ref).max()), same_exit_layers=layers[k] == ref_layers,
                 same_labels=bool((got.argmax(1) == ref.argmax(1)).all()), avg_exit_layer=float(np.mean(layers[k])))
    return out


def side_latency(spec: dict) -> dict:
    """Batch 1, one request at a time, round-robin over the configurations."""
    texts = spec["texts"]
    runners = _runners(spec)
    for r in runners.values():
        for t in texts[:3]:
            r.predict([t])  # warm-up: first loads, structure sessions, allocator growth
    total = dict.fromkeys(runners, 0.0)
    logits: dict[str, list] = {k: [] for k in runners}
    layers: dict[str, list] = {k: [] for k in runners}
    for t in texts:
        for k, r in runners.items():
            s = time.perf_counter()
            res = r.predict([t])
            total[k] += time.perf_counter() - s
            logits[k].append(res.logits[0].tolist())
            layers[k].append(int(res.exit_layers[0]))
    out = {k: {"mean_ms": 1000 * total[k] / len(texts), "throughput": len(texts) / total[k],
               "loads": r.cache.stats.loads} for k, r in runners.items()}
    for r in runners.values():
        r.close()
    return {"rows": _agree(out, logits, layers, next(iter(runners)))}


def side_many(spec: dict) -> dict:
    """Many inputs in micro-batches: the set in ``chunks`` pieces, each piece run by every configuration in turn."""
    texts, n = spec["texts"], spec["chunks"]
    runners = _runners(spec)
    modes = [c[2] for c in spec["configs"]]
    for r, mode in zip(runners.values(), modes, strict=True):
        r.predict(texts[:16], batch_size=spec["batch"], mode=mode)
    total = dict.fromkeys(runners, 0.0)
    logits: dict[str, list] = {k: [] for k in runners}
    layers: dict[str, list] = {k: [] for k in runners}
    blocks: dict[str, int] = dict.fromkeys(runners, 0)
    size = -(-len(texts) // n)
    for c in range(0, len(texts), size):
        for (k, r), mode in zip(runners.items(), modes, strict=True):
            s = time.perf_counter()
            res = r.predict(texts[c:c + size], batch_size=spec["batch"], mode=mode)
            total[k] += time.perf_counter() - s
            logits[k] += res.logits.tolist()
            layers[k] += res.exit_layers.tolist()
            blocks[k] = max(blocks[k], res.stats.max_block)
    out = {k: {"throughput": len(texts) / total[k], "max_block": blocks[k], "loads": r.cache.stats.loads}
           for k, r in runners.items()}
    for r in runners.values():
        r.close()
    return {"rows": _agree(out, logits, layers, next(iter(runners)))}


SIDE_BY_SIDE = {"side_latency": side_latency, "side_many": side_many}

# (variant, budget[, mode]); the first of each group is its all-resident baseline
SIDE_BERT = {
    "FP32": [("ort-fp32", "all"), ("ort-fp32", "2layers"), ("ort-fp32-swap", "2layers"),
             ("ort-fp32-swap", "2layers", {"prefetch": False}), ("ort-fp32-swap", "2layers", {"populate": True}),
             ("ort-fp32-fused-swap", "2layers"), ("ort-fp32-swap", "all")],
    "FP32 fused (one call per layer)": [("ort-fp32-fused", "all"), ("ort-fp32-fused", "2layers"),
                                        ("ort-fp32-fused-swap", "2layers")],
    "INT8 static": [("ort-int8", "all"), ("ort-int8", "2layers"), ("ort-int8-swap", "2layers"),
                    ("ort-int8-fused-swap", "2layers")],
}
SIDE_MANY = [("ort-fp32", "all", "latency"), ("ort-fp32", "2layers", "block"), ("ort-fp32-swap", "2layers", "block"),
             ("ort-fp32-fused-swap", "2layers", "block")]
SIDE_COLA = [("ort-int8-fused", "all"), ("ort-int8-fused", "2layers"), ("ort-int8-fused-swap", "2layers"),
             ("ort-int8-fused-swap", "2layers", {"prefetch": False}), ("ort-int8-fused-swap", "2layers", {"populate": True}),
             ("ort-int8-fused-swap", "all")]

COLA = [  # (variant, budget, prefetch): one process each, for the memory columns
    ("ort-int8-fused", "all", True), ("ort-int8-fused", "2layers", True), ("ort-int8-fused-swap", "2layers", True),
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
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine
    from swap_cost import demo_copy

    report: dict[str, Any] = {"model": "BERT-base shape (12x768, random weights), bert-base-uncased tokenizer",
                              "machine": machine(), "loadavg_start": os.getloadavg(), "side": {}, "rows": [],
                              "cola_rows": []}
    for workload, texts in workloads().items():
        for group, configs in SIDE_BERT.items():
            got = run({"kind": "side_latency", "artifact": str(art), "configs": configs, "texts": texts[: a.examples]})
            report["side"][f"{workload} | {group}"] = got["rows"]
            print(workload, group, {k: round(v["mean_ms"], 2) for k, v in got["rows"].items()}, flush=True)
    got = run({"kind": "side_many", "artifact": str(art), "configs": SIDE_MANY, "texts": many(a.many), "chunks": 2,
               "batch": a.batch})
    report["side"][f"many | {a.many} sentences, micro-batches of {a.batch}"] = got["rows"]
    print("many", {k: round(v["throughput"], 1) for k, v in got["rows"].items()}, flush=True)
    cola_art = a.cola or demo_copy()
    if cola_art is not None and cola_art.is_dir():
        from nanotrt.pipeline.build import build
        from nanotrt.pipeline.glue import read_split

        info = json.loads((cola_art / "manifest.json").read_text())["variants"]
        opts = info["ort-int8"].get("options", {})
        build(cola_art, int8=True, dynamic="ort-int8-dynamic" in info, fused=True, swap=True,
              **{k: opts[k] for k in ("calib_task", "calib_size", "calib_method", "int8_tolerance") if k in opts})
        texts = read_split("cola", "dev").texts[: a.cola_examples]
        got = run({"kind": "side_latency", "artifact": str(cola_art), "configs": SIDE_COLA, "texts": texts,
                   "exit": "patience=3"})
        report["side"]["cola | MiniLM-L6 demo, CoLA dev, INT8 static fused, patience=3"] = got["rows"]
        print("cola", {k: round(v["throughput"], 1) for k, v in got["rows"].items()}, flush=True)
        for variant, budget, prefetch in COLA:
            report["cola_rows"].append(run({"kind": "cola", "artifact": str(cola_art), "budget": budget,
                                            "prefetch": prefetch, "variant": variant, "examples": 300,
                                            "exit": "patience=3"}))
    for workload in workloads():
        for variant, budget, prefetch, threads, with_torch in LATENCY:
            report["rows"].append(run({"kind": "latency", "artifact": str(art), "budget": budget, "prefetch": prefetch,
                                       "torch": with_torch, "threads": threads, "workload": workload,
                                       "examples": a.examples, "variant": variant}))
            r = report["rows"][-1]
            print(f"{workload[:5]} {variant:20s} {budget:8s} prefetch={prefetch!s:5s} VmHWM {r['peak_rss'] / 1e6:7.1f} MB "
                  f"anon {r['peak_anon'] / 1e6:7.1f} MB mean {r['mean_ms']:7.2f} ms loads {r['loads']}", flush=True)
    for r in report["cola_rows"]:
        r.pop("logits", None)
        r.pop("exit_layers", None)
    report["loadavg_end"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "streaming_memory.json", report)
    (a.out / "streaming_memory.md").write_text(markdown(report, a))
    print(f"wrote {a.out / 'streaming_memory.md'}")


def mem_cells(r: dict, base: dict) -> str:
    """VmHWM | vs all | peak RssAnon | vs all | peak RssFile."""
    return (f"{r['peak_rss'] / 1e6:.1f} MB | {r['peak_rss'] / base['peak_rss']:.0%} | {r['peak_anon'] / 1e6:.1f} MB | "
            f"{r['peak_anon'] / base['peak_anon']:.0%} | {r['peak_file'] / 1e6:.1f} MB")


MEM_HEAD = "VmHWM | VmHWM vs all | peak RssAnon | anon vs all | peak RssFile"


def side_table(rows: dict[str, dict], key: str) -> list[str]:
    """One interleaved group: the first row is the all-resident baseline."""
    base = next(iter(rows.values()))
    unit = "ms / example" if key == "mean_ms" else "ex/s"
    lines = [f"| configuration | {unit} | vs all resident | loads | same labels / exit layers | max logit diff |",
             "|---|---|---|---|---|---|"]
    for k, r in rows.items():
        ratio = r[key] / base[key] if key == "mean_ms" else r[key] / base[key]
        lines.append(f"| {k} | {r[key]:.2f} | {ratio:.2f}x | {r['loads']} | {r['same_labels']} / "
                     f"{r['same_exit_layers']} | {r['max_abs_logit_diff']:.1e} |")
    return lines + [""]


def markdown(report: dict, a: argparse.Namespace) -> str:
    mi = report["machine"]
    load = f"load average {report['loadavg_start'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the end"
    lines = ["# Streaming runner: memory, latency and throughput (BERT-base shape; MiniLM on CoLA)", "",
             f"`flock /tmp/nanotrt-cpu.lock python benchmarks/streaming_memory.py --examples {a.examples} --many {a.many} "
             f"--batch {a.batch}`; {mi['cpu']}, {mi['cores']} cores, shared with other jobs ({load}). "
             "`ort-fp32` / `ort-int8` (and `-fused`) are `nanotrt build` variants: a swap builds a session from the "
             "built graph. `*-swap` are `nanotrt build --swap` variants: one session per layer structure, built once; "
             "a swap maps the layer's weight file and binds it by address as the inputs (the run faults the pages in from "
             "the page cache; `populate=True`: MAP_POPULATE on the prefetch thread). When nothing is swapped a swap "
             "variant runs its source's prepacked graphs. Streamed INT8 logits differ from all-resident ones because "
             "ORT's prepacked and unprepacked integer kernels round differently (both streaming paths run unprepacked). Budgets: `2layers` = two of the variant's largest graphs + one full-length example's "
             "activations; a swap variant's graph bytes are its mapped weight file.", "",
             "**Latency and throughput** are measured side by side: every configuration of a table in one process, "
             "examples interleaved round-robin, so that load from other jobs hits all alike; the ratio is to the "
             "table's first row (all resident, built graphs with ORT's weight prepacking). Default threads (ORT's "
             "process-wide pool).", ""]
    for name, rows in report["side"].items():
        workload, group = name.split(" | ", 1)
        title = {"many": f"{group}", "cola": group}.get(workload, f"Batch 1, {workload}: {group}")
        lines += [f"## {title}", ""] + side_table(rows, "mean_ms" if workload not in ("many",) else "throughput")
    lines += ["**Memory** is measured one configuration per process (a process's peaks are its own): VmHWM (peak "
              "RSS, anonymous + file-backed), and peak RssAnon (heap, activations, copies of weights: what the "
              "kernel cannot reclaim; what the budget protects) and peak RssFile (mapped weight files and "
              "libraries: clean pages the kernel drops under pressure and re-reads) sampled every 2 ms "
              "(benchmarks/memstat.py). Percentages compare with the all-resident row of the session variant the "
              "row is made from. Latency here is each process's own (not side by side: indicative only).", ""]
    for workload in workloads():
        sel = [r for r in report["rows"] if r["workload"] == workload]
        lines += [f"## Memory, batch 1, {workload} ({a.examples} examples)", "",
                  f"| variant | budget | prefetch | {MEM_HEAD} | engines peak | activations peak | latency ms | loads | "
                  "ms / load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            alls = {b["variant"]: b for b in sel if b["budget"] == "all"}
            base = alls.get(source(r["variant"])) or alls[source(r["variant"]).replace("-fused", "")]
            lines.append(f"| {r['variant']} | {r['budget']} | {r['prefetch']} | {mem_cells(r, base)} | "
                         f"{r['peak_engine_bytes'] / 1e6:.1f} MB | {r['peak_activation_bytes'] / 1e6:.1f} MB | "
                         f"{r['mean_ms']:.2f} | {r['loads']} | {1000 * r['load_s'] / max(r['loads'], 1):.2f} |")
        lines.append("")
    if report["cola_rows"]:
        rows = report["cola_rows"]
        base = rows[0]
        lines += ["## Memory, MiniLM-L6 demo, CoLA dev (first 300), batch 1, `patience=3`", "",
                  f"| variant | budget | {MEM_HEAD} | engines peak | ex/s | loads |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['budget']} | {mem_cells(r, base)} | {r['peak_engine_bytes'] / 1e6:.1f} MB | "
                         f"{r['throughput']:.1f} | {r['loads']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
