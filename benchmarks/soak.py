"""Soak: many predictions through one Runner under a streaming budget; RSS sampled every N predictions.

Not a unit test: it runs for minutes. A leak (engines, sessions, arrays, threads) shows as RSS growing
with the prediction count; a bounded runtime levels off after warm-up. Writes
benchmarks/results/soak.{json,md}. Run it alone on the machine:

    flock /tmp/nanotrt-cpu.lock python benchmarks/soak.py   # demo CoLA artifact, 20,000 predictions
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil

OUT = Path(__file__).parent / "results"


def main() -> None:
    from nanotrt.pipeline.bench import peak_rss_bytes
    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.fsutil import atomic_file, write_json
    from nanotrt.runtime.runner import Runner

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--artifact", default=str(Path.home() / ".cache/nanotrt/minilm-cola/artifact"))
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--every", type=int, default=1_000)
    ap.add_argument("--budget", default="2layers")
    ap.add_argument("--exit", default="patience=3")
    ap.add_argument("--variant", default="ort-fp32", help="the built FP32 graphs (fast loads), as bench uses")
    ap.add_argument("--out", default=str(OUT / "soak"))
    args = ap.parse_args()

    texts = read_split("cola", "dev").texts
    proc = psutil.Process()
    samples = []
    t0 = time.perf_counter()
    with Runner.from_artifact(args.artifact, memory_budget=args.budget, exit=args.exit, variant=args.variant) as r:
        for k in range(args.n):
            r.predict([texts[k % len(texts)]])
            if (k + 1) % args.every == 0:
                s = r.cache.stats
                samples.append({"predictions": k + 1, "rss_mb": round(proc.memory_info().rss / 1e6, 1),
                                "elapsed_s": round(time.perf_counter() - t0, 1), "loads": s.loads,
                                "resident_engine_mb": round(r.cache.resident_bytes / 1e6, 2),
                                "threads": threading.active_count()})
                print(json.dumps(samples[-1]), flush=True)
        budget = r.describe_budget()
    rss = np.array([s["rss_mb"] for s in samples])
    warm = rss[len(rss) // 4:]  # after warm-up: the last three quarters
    slope = float(np.polyfit([s["predictions"] for s in samples][len(rss) // 4:], warm, 1)[0]) * 1000
    report = {"artifact": args.artifact, "variant": args.variant, "budget": budget, "exit": args.exit,
              "predictions": args.n, "every": args.every, "samples": samples,
              "rss_first_mb": float(rss[0]), "rss_last_mb": float(rss[-1]), "rss_max_mb": float(rss.max()),
              "rss_range_after_warmup_mb": round(float(warm.max() - warm.min()), 1),
              "rss_slope_mb_per_1000_after_warmup": round(slope, 3), "peak_rss_mb": round(peak_rss_bytes() / 1e6, 1),
              "wall_s": round(time.perf_counter() - t0, 1), "cpu": psutil.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    rows = "\n".join(f"| {s['predictions']} | {s['rss_mb']} | {s['loads']} | {s['threads']} | {s['elapsed_s']} |"
                     for s in samples)
    md = (f"# Soak: {args.n} predictions, budget {budget}, exit {args.exit}, variant {args.variant}\n\n"
          f"`flock /tmp/nanotrt-cpu.lock python benchmarks/soak.py` on `{args.artifact}` (CoLA dev sentences "
          f"cycled, batch 1). RSS after warm-up (last 3/4 of samples): range {report['rss_range_after_warmup_mb']} MB,"
          f" slope {report['rss_slope_mb_per_1000_after_warmup']} MB per 1,000 predictions; peak RSS (VmHWM) "
          f"{report['peak_rss_mb']} MB; {report['wall_s']} s on a shared 2-core machine.\n\n"
          "| predictions | RSS MB | engine loads | threads | elapsed s |\n|---|---|---|---|---|\n" + rows + "\n")
    with atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(md)


if __name__ == "__main__":
    main()
