"""Deadline exits at batch 1: p50/p95 latency against the deadline, misses and the dev metric.

For each deadline, ``deadline=D`` alone and combined with a confidence rule (``RULE,deadline=D``), once
with the device profile (`nanotrt profile`, measured first in this run) and once measuring online (no
profile). Latency is the runner's own time per example (tokenized input -> answer), the span the
deadline covers. Writes deadline_TASK.{json,md} into --out.

    python benchmarks/deadline_report.py ART --task cola --limit 500 --deadlines auto --rule patience=3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.pipeline.glue import compute_metrics, get_task, predictions_from_logits, read_split
from nanotrt.runtime.fsutil import atomic_file, write_json
from nanotrt.runtime.profile import machine, run_profile
from nanotrt.runtime.runner import Runner

WARMUP = 5


def run(art: Path, spec: str, batches: list[dict[str, np.ndarray]], labels: np.ndarray, task: Any,
        online: bool, threads: int | None) -> dict[str, Any]:
    with Runner.from_artifact(art, exit=spec, threads=threads) as r:
        if online and hasattr(r.policy, "profile"):
            r.policy.profile = None  # type: ignore[attr-defined]  # measure online instead of the profile
        for b in batches[:WARMUP]:
            r.run_encoded(b)
        lat, logits, layers = [], [], []
        for b in batches:
            t = time.perf_counter()
            lg, ly, _ = r.run_encoded(b)
            lat.append((time.perf_counter() - t) * 1000)
            logits.append(lg)
            layers.append(ly)
    lat_a = np.array(lat)
    m = compute_metrics(task, labels, predictions_from_logits(task, np.concatenate(logits)))[task.main_metric]
    return {"exit": spec, "mode": "online" if online else "profile", "p50_ms": float(np.percentile(lat_a, 50)),
            "p95_ms": float(np.percentile(lat_a, 95)), "max_ms": float(lat_a.max()), "lat_ms": lat_a.tolist(),
            "metric": m, "avg_exit": float(np.concatenate(layers).mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--task", default="cola")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--deadlines", default="auto", help="ms, comma-separated; auto: 30/50/70/90 %% of full depth p50")
    ap.add_argument("--rule", default="patience=3")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    task = get_task(args.task)
    split = read_split(task, "dev", limit=args.limit)
    with Runner.from_artifact(args.artifact, exit="none") as r:
        batches = [r.tokenizer([t], [p] if split.pairs else None) for t, p in
                   zip(split.texts, split.pairs or [None] * len(split), strict=True)]
    path, prof = run_profile(args.artifact, batches="1,4", seqs="8,16,32,64,128", repeats=20, threads=args.threads)
    rows = [run(args.artifact, "none", batches, split.labels, task, False, args.threads),
            run(args.artifact, args.rule, batches, split.labels, task, False, args.threads)]
    full = rows[0]["p50_ms"]
    deadlines = ([round(f * full * 2) / 2 for f in (0.3, 0.5, 0.7, 0.9)] if args.deadlines == "auto"
                 else [float(x) for x in args.deadlines.split(",")])
    for d in deadlines:
        for spec in (f"deadline={d:g}ms", f"{args.rule},deadline={d:g}ms"):
            for online in (False, True):
                res = run(args.artifact, spec, batches, split.labels, task, online, args.threads)
                res["deadline_ms"] = d
                res["misses"] = int(sum(x > d for x in res["lat_ms"]))
                rows.append(res)
    report = {"task": task.name, "artifact": str(args.artifact), "examples": len(split), "batch_size": 1,
              "profile": str(path), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "deadlines_ms": deadlines, "rows": rows}
    out = args.out / f"deadline_{task.name}"
    write_json(out.with_suffix(".json"), report)
    with atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(report))
    print(to_markdown(report))


def to_markdown(rep: dict[str, Any]) -> str:
    mi = rep["machine"]
    lines = [f"# Deadline exits: {rep['task']} dev, batch 1", "",
             f"`{rep['artifact']}`, first {rep['examples']} dev examples, {rep['date']}. Machine: {mi['cpu']}, "
             f"{mi['cores']} cores (shared with other jobs: tails are noisy). Latency = the runner's time per "
             f"example (tokenized input to answer). Profile: `{rep['profile']}` (measured in the same run).", "",
             "| exit | cost model | deadline ms | p50 ms | p95 ms | max ms | misses (> deadline) | metric | avg exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        d = r.get("deadline_ms")
        miss = f"{r['misses']} ({100 * r['misses'] / rep['examples']:.1f} %)" if d is not None else "-"
        lines.append(f"| `{r['exit']}` | {r['mode'] if d is not None else '-'} | {d if d is not None else '-'} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['max_ms']:.2f} | {miss} | {100 * r['metric']:.2f} | "
                     f"{r['avg_exit']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
