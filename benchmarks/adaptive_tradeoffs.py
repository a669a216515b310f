"""Issue #12 trade-offs from the per-ramp outputs of the trainings in benchmarks/results/adaptive/*.npz.

The npz files hold, per training config, every ramp's logits (and learned exit probabilities) on the
held-out TRAIN rows and on DEV, as written by the device driver (commands in adaptive_tradeoffs.md).
Every policy is replayed with the runner's own ExitPolicy code (``calibrate_exit.simulate``); settings are
chosen on the held-out train rows and reported on dev. Writes adaptive_tradeoffs.{json,md,png}.

    python benchmarks/adaptive_tradeoffs.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.pipeline.calibrate_exit import candidates, choose, evaluate
from nanotrt.pipeline.glue import compute_metrics, get_task, predictions_from_logits
from nanotrt.runtime.fsutil import atomic_file, write_json

MAX_LOSS = 0.5
LAMBDAS = ("pen0.01", "pen0.03", "pen0.1", "pen0.3")  # second device run: the halting heads that trained


def load(results: Path, task: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reports and arrays of both device runs (the second run's lambda sweep replaces the first's)."""
    reports, arrays = {}, {}
    for name in (f"{task}.npz", f"{task}-call2.npz"):
        p = results / "adaptive" / name
        if not p.is_file():
            continue
        z = np.load(p)
        rep = json.loads(str(z["report_json"]))
        if name.endswith("call2.npz"):
            rep = {k: {**v, "run": 2} for k, v in rep.items()}
        reports.update(rep)
        arrays.update({k: z[k] for k in z.files if k != "report_json"})
    return reports, arrays


def metric(task: Any, labels: np.ndarray, logits: np.ndarray) -> float:
    return compute_metrics(task, labels, predictions_from_logits(task, logits))[task.main_metric]


def per_ramp(task: Any, arrays: dict[str, np.ndarray], cfg: str) -> list[float]:
    lg = arrays[f"{cfg}/dev_logits"]
    return [100 * metric(task, arrays["dev_labels"], lg[:, i]) for i in range(lg.shape[1])]


def curve(task: Any, arrays: dict[str, np.ndarray], cfg: str, specs: list[str], split: str = "dev") -> list[dict[str, Any]]:
    lg, pr = arrays[f"{cfg}/{split}_logits"], arrays.get(f"{cfg}/{split}_exit_prob")
    tt = "regression" if task.is_regression else "classification"
    return [c.__dict__ for c in evaluate(task, arrays[f"{split}_labels"], lg, pr, specs, tt)]


def fixed_depth_at(points: list[float], avg: float) -> float:
    """Metric of fixed depth at a fractional average cost: mixing depth d and d+1 (linear)."""
    d = int(np.clip(np.floor(avg), 1, len(points) - 1))
    return points[d - 1] + (avg - d) * (points[d] - points[d - 1])


def calibrated(task: Any, arrays: dict[str, np.ndarray], cfg: str, fams: tuple[str, ...]) -> dict[str, Any] | None:
    """Choose on the held-out train rows (max loss 0.5), report on dev, next to fixed depth at equal cost."""
    lg = arrays[f"{cfg}/holdout_logits"]
    tt = "regression" if task.is_regression else "classification"
    specs = candidates(tt, lg.shape[1], f"{cfg}/holdout_exit_prob" in arrays, fams)
    hold = evaluate(task, arrays["holdout_labels"], lg, arrays.get(f"{cfg}/holdout_exit_prob"), specs, tt)
    full_hold = metric(task, arrays["holdout_labels"], lg[:, -1])
    best = choose(hold, full_hold, MAX_LOSS)
    if best is None:
        return None
    dev = curve(task, arrays, cfg, [best.spec])[0]
    ramps = per_ramp(task, arrays, cfg)
    return {"config": cfg, "families": ",".join(fams), "spec": best.spec, "holdout_full": 100 * full_hold,
            "holdout_metric": 100 * best.metric, "holdout_avg_exit": best.avg_exit,
            "dev_full": ramps[-1], "dev_metric": 100 * dev["metric"], "dev_avg_exit": dev["avg_exit"],
            "dev_fixed_depth_same_cost": fixed_depth_at(ramps, dev["avg_exit"])}


def analyse(results: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"max_loss": MAX_LOSS, "tasks": {}}
    for name in ("cola", "sst2", "stsb"):
        task = get_task(name)
        reports, arrays = load(results, name)
        if not reports:
            continue
        cfgs = [c for c in reports if f"{c}/dev_logits" in arrays]
        res: dict[str, Any] = {"metric": task.main_metric, "train": {c: {k: reports[c].get(k) for k in (
            "train_examples", "dev_examples", "train_seconds", "device", "config", "run")} for c in cfgs},
            "per_ramp": {c: per_ramp(task, arrays, c) for c in cfgs}, "curves": {}, "calibrated": []}
        layers = arrays[f"{cfgs[0]}/dev_logits"].shape[1]
        tt = "regression" if task.is_regression else "classification"
        if not task.is_regression:
            res["curves"]["joint patience"] = curve(task, arrays, "joint", candidates(tt, layers, False, ("patience",)))
            res["curves"]["joint entropy"] = curve(task, arrays, "joint", candidates(tt, layers, False, ("entropy",)))
            res["curves"]["joint fixed depth"] = [{"spec": f"depth={d}", "metric": v / 100, "avg_exit": d}
                                                  for d, v in enumerate(res["per_ramp"]["joint"], 1)]
            for lam in LAMBDAS:
                if lam in cfgs:
                    res["curves"][f"learned {lam}"] = curve(task, arrays, lam, candidates(tt, layers, True, ("learned",)))
            plan = [(c, f) for c in ("joint", "distill", *LAMBDAS) if c in cfgs
                    for f in (("patience",), ("entropy",), ("pcee",), ("learned",), ("patience", "entropy", "maxprob",
                                                                                    "pcee", "learned"))]
        else:
            plan = [(c, ("patience",)) for c in ("joint", "distill") if c in cfgs]
        for c, fams in plan:
            if "learned" in fams and len(fams) == 1 and f"{c}/dev_exit_prob" not in arrays:
                continue
            r = calibrated(task, arrays, c, fams)
            if r:
                res["calibrated"].append(r)
        out["tasks"][name] = res
    return out


def to_markdown(rep: dict[str, Any]) -> str:
    lines = ["# Adaptive computation: distilled ramps, compute penalty, calibrated exits (issue #12)", "",
             "Demo MiniLM-L6 (all-MiniLM-L6-v2 weights, carried to the GPU machine as fp16 and restored to fp32), "
             "off-ramps trained on one NVIDIA H200 by `benchmarks/adaptive_device_driver.py`; every policy replayed "
             "here from the saved per-ramp outputs with the runner's ExitPolicy code. Train split minus a seeded "
             "held-out slice (CoLA 1000, SST-2 2000, STS-B 700 rows); SST-2: the first 16,000 remaining train rows, "
             "1 epoch; CoLA and STS-B: 3 epochs. Settings are chosen on the held-out TRAIN rows and reported on dev.",
             ""]
    for name, res in rep["tasks"].items():
        lines += [f"## {name} (dev {res['metric']}, x100)", "", "Per-ramp dev metric:", "",
                  "| config | " + " | ".join(f"ramp {i}" for i in range(1, 7)) + " | train s |", "|---|" + "---|" * 7]
        for c, vals in res["per_ramp"].items():
            lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {res['train'][c]['train_seconds']} |")
        lines += ["", f"Chosen on held-out train rows (max loss {rep['max_loss']} points), reported on dev:", "",
                  "| config | policies searched | chosen | holdout: full / chosen / avg exit | dev full depth | "
                  "dev chosen | dev loss | dev avg exit | fixed depth at same cost (dev) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["calibrated"]:
            lines.append(f"| {r['config']} | {r['families']} | `{r['spec']}` | {r['holdout_full']:.2f} / "
                         f"{r['holdout_metric']:.2f} / {r['holdout_avg_exit']:.2f} | {r['dev_full']:.2f} | "
                         f"{r['dev_metric']:.2f} | {r['dev_full'] - r['dev_metric']:+.2f} | {r['dev_avg_exit']:.2f} | "
                         f"{r['dev_fixed_depth_same_cost']:.2f} |")
        if res["curves"]:
            lines += ["", "Dev curves (metric @ avg exit layer):", ""]
            for k, pts in res["curves"].items():
                lines.append(f"- {k}: " + ", ".join(f"`{p['spec']}` {100 * p['metric']:.1f}@{p['avg_exit']:.2f}"
                                                    for p in pts))
        lines.append("")
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, r in rep["tasks"].items() if r["curves"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5))
    for ax, name in zip(np.atleast_1d(axes), tasks, strict=True):
        res = rep["tasks"][name]
        for k, pts in res["curves"].items():
            pts = sorted(pts, key=lambda p: p["avg_exit"])
            style = {"marker": "s", "ls": ":", "color": "k"} if "fixed" in k else {"marker": "o" if "learned" in k else "^"}
            ax.plot([p["avg_exit"] for p in pts], [100 * p["metric"] for p in pts], label=k, ms=3, **style)
        ax.axhline(res["per_ramp"]["joint"][-1] - rep["max_loss"], color="gray", lw=0.8, ls="--",
                   label=f"joint full depth - {rep['max_loss']}")
        ax.set_xlabel("average exit layer (of 6), dev")
        ax.set_ylabel(f"dev {res['metric']} (x100)")
        ax.set_title(f"{name}: compute penalty (learned exit) vs PABEE joint")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rep = analyse(args.results)
    stem = args.results / "adaptive_tradeoffs"
    write_json(stem.with_suffix(".json"), rep)
    with atomic_file(stem.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(rep))
    with atomic_file(stem.with_suffix(".png")) as tmp:
        plot(rep, tmp)
    print(to_markdown(rep))


if __name__ == "__main__":
    main()
