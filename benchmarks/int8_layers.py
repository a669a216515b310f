"""Per-layer latency FP32 vs INT8 (static QDQ, calibrated; dynamic) vs ORT-optimized FP32, side by side in
one process, on the same inputs; and the dev metric of every ramp per precision for trained artifacts.

    python benchmarks/int8_layers.py --artifact ART [--artifact ART2 ...] [--seq 128] [--batch 1]

ART must have been built with `nanotrt build ART --int8 --dynamic --fp16 --calib-task TASK`.
Writes int8_layers.json / int8_layers.md into --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ["fp32", "ort-fp32", "ort-fp16", "ort-int8", "ort-int8-dynamic"]


def layer_latency(art: Path, seq: int, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of every layer graph per variant; variants interleaved per repeat so drift hits all alike."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(art)
    hidden = m.data["hidden_size"]
    rng = np.random.default_rng(0)
    feeds = {"hidden_states": rng.standard_normal((batch, seq, hidden)).astype(np.float32),
             "attention_mask": np.ones((batch, seq), np.int64)}
    variants = [v for v in VARIANTS if v in m.variants]
    sessions = {}
    for v in variants:
        so = session_options(ort)
        for i, name in enumerate(m.schedule(v).layers):
            sessions[(v, i)] = ort.InferenceSession(str(m.verify(name)), so, providers=["CPUExecutionProvider"])
    times: dict[tuple[str, int], list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t)
    out: dict[str, dict[str, float]] = {}
    for v in variants:
        per = [1000 * float(np.median(times[(v, i)][1:])) for i in range(m.num_layers)]
        out[v] = {"mean_layer_ms": float(np.mean(per)), "per_layer_ms": per}  # type: ignore[dict-item]
    return out


def ramp_metrics(art: Path, limit: int | None) -> dict[str, list[float]]:
    """Dev metric of every ramp, per variant (full depth: every ramp sees every example)."""
    from nanotrt.pipeline.glue import compute_metrics, get_task, predictions_from_logits, read_split
    from nanotrt.runtime.runner import Runner

    out = {}
    for v in VARIANTS:
        with Runner.from_artifact(art, variant=v) as r:
            if v not in r.manifest.variants and v != "fp32":
                continue
            task = get_task(r.manifest.task or "")
            split = read_split(task, "dev", limit=limit)
            res = r.predict(split.texts, split.pairs, batch_size=32)
            out[v] = [compute_metrics(task, split.labels, predictions_from_logits(task, res.ramp_logits[:, i]))
                      [task.main_metric] for i in range(r.n)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, action="append", required=True)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine

    report = {"machine": machine(), "seq": a.seq, "batch": a.batch, "artifacts": {}}
    lines = ["# Per-layer INT8 vs FP32 and per-ramp accuracy by precision", "",
             f"`python benchmarks/int8_layers.py {' '.join('--artifact ' + str(p) for p in a.artifact)} "
             f"--seq {a.seq} --batch {a.batch}`; {report['machine']['cpu']}, {report['machine']['cores']} cores.", ""]
    for art in a.artifact:
        m = Manifest.load(art)
        lat = layer_latency(art, a.seq, a.batch, a.repeats)
        rm = ramp_metrics(art, a.limit) if m.task else {}
        info = m.data["variants"].get("ort-int8", {})
        report["artifacts"][str(art)] = {"task": m.task, "latency": lat, "ramp_metrics": rm,
                                         "int8_rel_error": info.get("rel_error"), "kept_fp32": info.get("kept_fp32")}
        base = lat["fp32"]["mean_layer_ms"]
        lines += [f"## {art.parent.name} ({m.task or 'random weights'}, {m.num_layers} layers, H={m.data['hidden_size']})", "",
                  f"Layer latency at batch {a.batch} x seq {a.seq} (median of {a.repeats}, variants interleaved):", "",
                  "| variant | mean ms / layer | speedup vs fp32 |", "|---|---|---|"]
        lines += [f"| {v} | {d['mean_layer_ms']:.2f} | {base / d['mean_layer_ms']:.2f}x |" for v, d in lat.items()]
        if rm:
            n = len(next(iter(rm.values())))
            lines += ["", f"Dev {m.task} metric (x100) of every ramp:", "",
                      "| variant | " + " | ".join(f"L{i + 1}" for i in range(n)) + " |", "|---" * (n + 1) + "|"]
            lines += [f"| {v} | " + " | ".join(f"{100 * x:.2f}" for x in vals) + " |" for v, vals in rm.items()]
        if info.get("kept_fp32") is not None:
            lines += ["", f"INT8 graphs kept in FP32 (rel. error > tolerance): {info['kept_fp32'] or 'none'}; "
                      f"max rel. error {max(info['rel_error'].values()):.3f}"]
        lines.append("")
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "int8_layers.json", report)
    (a.out / "int8_layers.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
