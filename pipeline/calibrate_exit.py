"""`nanotrt calibrate-exit`: choose an artifact's default exit policy on held-out TRAIN rows, never dev.

1. The artifact runs at full depth on the train rows its training kept out (``train --holdout``, recorded
   in the manifest), recording every ramp's logits (and exit_prob of a learned halting head).
2. Each candidate setting of each policy (patience, entropy, max-prob, learned, PCEE-style patience over
   confident ramps, fixed depth) is replayed offline on those outputs with the same ExitPolicy code the
   runner uses (``simulate``).
3. The most aggressive setting (lowest average exit layer) whose metric stays within ``max_loss`` points
   of full depth becomes the manifest's ``default_exit``; `predict` and `bench` use it unless --exit.
The dev split is never read here, so `nanotrt bench` reports an honest dev metric of the choice.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.pipeline.glue import Split, Task, compute_metrics, get_task, predictions_from_logits, read_split
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.exits import Deadline, ExitPolicy, StepContext, parse_exit

HOLDOUT_SEED = 1234  # fixed: training and calibration must draw the same rows
FALLBACK_ROWS = 1000  # artifacts trained without --holdout: a seeded sample of train (seen in training)
FAMILIES = ("patience", "entropy", "maxprob", "learned", "pcee", "depth")


def holdout_indices(rows: int, count: int, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """The train rows kept out of training (sorted), a seeded sample of ``count`` of ``rows``."""
    return np.sort(np.random.default_rng(seed).permutation(rows)[:count])


def subset(split: Split, idx: np.ndarray) -> Split:
    return Split(split.task, [split.texts[i] for i in idx],
                 [split.pairs[i] for i in idx] if split.pairs is not None else None,
                 split.labels[idx], split.skipped)


# --- offline replay -----------------------------------------------------------------------------

def simulate(policy: ExitPolicy, ramp_logits: np.ndarray, exit_prob: np.ndarray | None = None,
             batch: int = 256, live: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replay ``policy`` on precomputed ramp outputs ([N, layers, labels], [N, layers]) exactly as the
    runner walks them; ``live``: the layers (0-based) whose ramps run (a plan's exit points; default all).
    Returns (exit layer [N], 1-based; logits of the exit ramp [N, labels])."""
    if isinstance(policy, Deadline):
        raise NanotrtError("a deadline depends on this device's clock and cannot be replayed offline: "
                           "calibrate its confidence rule, then add ,deadline=... at run time")
    n, layers, _ = ramp_logits.shape
    points = [i for i in (range(layers) if live is None else sorted(live)) if i < layers - 1]
    out_layer = np.full(n, layers, dtype=np.int64)
    for s in range(0, n, batch):
        idx = np.arange(s, min(s + batch, n))
        state = policy.init(len(idx))
        active = np.arange(len(idx))
        for i in points:
            outputs = {} if exit_prob is None else {"exit_prob": exit_prob[idx[active], i]}
            stop = policy.step(state, i, ramp_logits[idx[active], i], active, StepContext(outputs))
            out_layer[idx[active[stop]]] = i + 1
            active = active[~stop]
            if len(active) == 0:
                break
    return out_layer, ramp_logits[np.arange(n), out_layer - 1]


def candidates(task_type: str, layers: int, learned: bool, families: tuple[str, ...] = FAMILIES) -> list[str]:
    """The settings searched, per policy family (regression: patience over |delta| thresholds, depth)."""
    out: list[str] = []
    if "depth" in families:
        out += [f"depth={d}" for d in range(1, layers)]
    pat = range(1, layers)
    if task_type == "regression":
        if "patience" in families:
            out += [f"patience={p},delta={d:g}" for p in pat for d in (0.05, 0.1, 0.2, 0.3, 0.5)]
        return out
    if "patience" in families:
        out += [f"patience={p}" for p in pat]
    if "entropy" in families:
        out += [f"entropy={t:g}" for t in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)]
    if "maxprob" in families:
        out += [f"maxprob={p:g}" for p in (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)]
    if "pcee" in families:
        out += [f"patience={p},maxprob={q:g}" for p in range(1, min(4, layers)) for q in (0.7, 0.8, 0.9, 0.95)]
    if "learned" in families and learned:
        out += [f"learned={t:g}" for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    return out


@dataclass
class Choice:
    spec: str
    metric: float
    avg_exit: float


def evaluate(task: Task, labels: np.ndarray, ramp_logits: np.ndarray, exit_prob: np.ndarray | None,
             specs: list[str], task_type: str) -> list[Choice]:
    layers = ramp_logits.shape[1]
    res = []
    for spec in specs:
        layer, logits = simulate(parse_exit(spec, task_type, layers), ramp_logits, exit_prob)
        m = compute_metrics(task, labels, predictions_from_logits(task, logits))[task.main_metric]
        res.append(Choice(spec, m, float(layer.mean())))
    return res


def choose(results: list[Choice], full: float, max_loss: float) -> Choice | None:
    """Lowest average exit within ``max_loss`` points (x100 metric) of full depth; ties: higher metric."""
    ok = [c for c in results if 100 * (full - c.metric) <= max_loss + 1e-9]
    return min(ok, key=lambda c: (round(c.avg_exit, 6), -c.metric)) if ok else None


# --- running the artifact on the holdout ---------------------------------------------------------

class _Recorder(ExitPolicy):
    """Never exits; keeps each ramp's exit_prob (the runner returns every ramp's logits itself)."""

    def __init__(self, layers: int):
        self.layers = layers
        self.chunks: list[np.ndarray] = []

    def init(self, batch: int) -> dict[str, np.ndarray]:
        # Kept in the micro-batch's own state: in block mode the runner interleaves micro-batches.
        self.chunks.append(np.full((batch, self.layers), np.nan, dtype=np.float32))
        return {"exit_prob": self.chunks[-1]}

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        if ctx is not None and "exit_prob" in ctx.outputs:
            state["exit_prob"][rows, layer] = np.asarray(ctx.outputs["exit_prob"]).reshape(len(rows))
        return np.zeros(len(rows), dtype=bool)


def holdout_split(manifest: Any, task: Task, data_dir: str | None) -> tuple[Split, dict[str, Any]]:
    """The train rows the artifact's training held out, or (older artifacts) a seeded train sample."""
    rec = dict(manifest.data.get("ramp", {}).get("holdout") or {})
    full = read_split(task, "train", data_dir)
    if rec:
        if rec.get("rows") != len(full):
            raise NanotrtError(f"the {task.name} train split has {len(full)} rows but the artifact was trained on "
                               f"one with {rec.get('rows')}: calibrate with the same GLUE files")
        return subset(full, holdout_indices(len(full), int(rec["count"]), int(rec["seed"]))), {
            **rec, "seen_in_training": False}
    count = min(FALLBACK_ROWS, len(full))
    warnings.warn(f"this artifact records no held-out train rows (train with --holdout N): calibrating on "
                  f"{count} train rows it was probably trained on, which flatters early exits", stacklevel=2)
    return subset(full, holdout_indices(len(full), count)), {"split": "train", "count": count, "seed": HOLDOUT_SEED,
                                                            "rows": len(full), "seen_in_training": True}


def ramp_outputs_on(artifact: Path, split: Split, precision: str, batch_size: int, variant: str | None = None,
                    backend: str = "onnxruntime") -> tuple[np.ndarray, np.ndarray | None]:
    """Every ramp's logits (and exit_prob) at full depth on ``split``. A plan runs only its live ramps, so
    the default is the best per-layer variant."""
    from nanotrt.runtime import variants as registry
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import Runner

    m = Manifest.load(artifact)
    rec = _Recorder(m.num_layers)
    if variant is None:
        variant = m.best_variant(precision, backend)
        variant = registry.get(variant).source or variant if registry.get(variant).kind == "plan" else variant
    with Runner.from_artifact(artifact, backend=backend, exit=rec, variant=variant) as runner:
        res = runner.predict(split.texts, split.pairs, batch_size=batch_size)
    probs = np.concatenate(rec.chunks) if rec.chunks else None
    learned = probs is not None and not np.isnan(probs[:, :-1]).all()
    return res.ramp_logits, (probs if learned else None)


def calibrate_exit(artifact: str | Path, task: str | None = None, max_loss: float = 0.5,
                   families: tuple[str, ...] = FAMILIES, precision: str = "fp32", data_dir: str | None = None,
                   batch_size: int = 32, write: bool = True) -> dict[str, Any]:
    """Pick and (with ``write``) store the artifact's default exit; returns the calibration record."""
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(artifact)
    t = get_task(task or m.task or "")
    if max_loss < 0:
        raise NanotrtError(f"--max-loss {max_loss}: use a metric loss >= 0 points (e.g. 0.5)")
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise NanotrtError(f"unknown policy family {bad[0]}: use {', '.join(FAMILIES)}")
    split, rec = holdout_split(m, t, data_dir)
    logits, probs = ramp_outputs_on(Path(artifact), split, precision, batch_size)
    full = compute_metrics(t, split.labels, predictions_from_logits(t, logits[:, -1]))[t.main_metric]
    specs = candidates(m.task_type, m.num_layers, probs is not None, families)
    results = evaluate(t, split.labels, logits, probs, specs, m.task_type)
    best = choose(results, full, max_loss)
    chosen = best.spec if best else "none"
    record = {"task": t.name, "metric": t.main_metric, "holdout": rec, "precision": precision, "max_loss": max_loss,
              "full_depth": full, "default_exit": chosen, "date": time.strftime("%Y-%m-%d %H:%M"),
              "chosen": best.__dict__ if best else {"spec": "none", "metric": full, "avg_exit": float(m.num_layers)},
              "candidates": [c.__dict__ for c in results]}
    if write:  # under the writer lock, onto the manifest as it is now (a build may have run meanwhile)
        from nanotrt.runtime.fsutil import writer_lock

        with writer_lock(m.root):
            fresh = Manifest.load(m.root)
            fresh.data["default_exit"] = chosen
            fresh.data["exit_calibration"] = record
            fresh.save()  # temp file + rename
    return record
