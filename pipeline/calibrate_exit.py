"""`nanotrt calibrate-exit`: choose an artifact's default exit policy on held-out TRAIN rows, never dev.

1. The artifact runs at full depth on the train rows its training kept out (``train --holdout``, recorded
   in the manifest), recording every ramp's logits (and exit_prob of a learned halting head).
2. Each candidate setting of each policy (patience, entropy, max-prob, learned, PCEE-style patience over
   confident ramps, fixed depth) is replayed offline on those outputs with the same ExitPolicy code the
   runner uses (``simulate``).
3. The most aggressive setting (lowest average exit layer) whose loss is within ``max_loss`` points of full
   depth *with confidence* (``select``: an upper confidence bound, paired bootstrap over rows; or, needing no
   labels, the exact binomial bound on disagreement with the full-depth prediction) becomes the manifest's
   ``default_exit``; `predict` and `bench` use it unless --exit. Too few rows to bound anything: full depth,
   said so, with the --holdout that would do. `nanotrt plan` reuses ``select`` on the ramps it keeps.
The dev split is never read here, so `nanotrt bench` reports an honest dev metric of the choice.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.pipeline.glue import (
    METRICS,
    Split,
    Task,
    compute_metrics,
    get_task,
    predictions_from_logits,
    read_split,
)
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


# --- selection with a confidence bound -------------------------------------------------------------
# Losses are in points (x100 of the task's main metric, or % of rows for --agreement). A point estimate on a
# few hundred held-out rows does not carry over (issue 25: +0.4 held out, -1.4 on dev), so a setting passes
# only when an upper confidence bound of its loss is within max_loss.

BOOTSTRAP = 1000  # resamples of the held-out rows (shared by every candidate: paired with full depth)
BOOT_SEED = 4321
REGRESSION_AGREE = 0.05  # --agreement on regression: |exit - full| within 5% of the full-depth score range


@dataclass
class Candidate:
    spec: str
    loss: float  # points: metric drop vs full depth x100, or % of rows disagreeing with full depth
    bound: float  # upper confidence bound of ``loss``
    avg_exit: float  # 1-based, in the model's real layers
    metric: float | None = None  # labelled: the setting's metric on the held-out rows (fraction)
    passed: bool = False
    tested: bool = True  # False: its family's sequence stopped at a more conservative setting that failed


@dataclass
class Selection:
    spec: str  # "none" (full depth) when nothing can be shown to be within max_loss
    loss: float
    bound: float
    avg_exit: float
    rows: int
    confidence: float
    max_loss: float
    criterion: str  # "metric" (labelled, bootstrap) or "agreement" (with full depth, Clopper-Pearson)
    full_depth: float | None  # labelled: full-depth metric on the held-out rows (fraction)
    bounded: bool  # False: too few rows to bound any early exit within max_loss (kept full depth)
    note: str  # one line for the user: why this choice, what would sharpen it
    suggest_holdout: int | None  # rows that would likely let the point estimate's choice pass
    candidates: list[Candidate]

    @property
    def passing(self) -> list[str]:
        """The settings shown to be within max_loss (none when the rows cannot bound any): `nanotrt plan`'s
        loss test."""
        return [c.spec for c in self.candidates if c.passed] if self.bounded else []

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "candidates"}
        return {**out, "candidates": [c.__dict__ for c in self.candidates]}


def resolution(rows: int, confidence: float) -> float:
    """Points of loss no held-out slice of ``rows`` can rule out: the one-sided binomial (Clopper-Pearson)
    bound on the disagreement rate of a setting that agreed with full depth on every row (rule of three)."""
    return 100 * (1 - (1 - confidence) ** (1 / rows)) if rows else 100.0


def rows_for_resolution(max_loss: float, confidence: float) -> int:
    """Fewest held-out rows whose resolution is within ``max_loss``."""
    return math.ceil(math.log(1 - confidence) / math.log1p(-max_loss / 100)) if 0 < max_loss < 100 else 1


def _family(spec: str, task_type: str, layers: int) -> str:
    p = parse_exit(spec, task_type, layers)
    gate = getattr(p, "confidence", None)
    return type(p).__name__ + (f"+{type(gate).__name__}" if gate is not None else "")


def _resampled(metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The metric on each bootstrap resample: y, p are [B, N] (rows drawn with replacement). Same formulas
    as glue.METRICS, vectorised over resamples; other metrics fall back to a loop."""
    if metric == "accuracy":
        return (y == p).mean(-1)
    if metric in ("mcc", "f1"):
        tp, fp = ((y == 1) & (p == 1)).sum(-1), ((y == 0) & (p == 1)).sum(-1)
        fn, tn = ((y == 1) & (p == 0)).sum(-1), ((y == 0) & (p == 0)).sum(-1)
        tp, fp, fn, tn = (a.astype(np.float64) for a in (tp, fp, fn, tn))
        if metric == "f1":
            prec, rec = tp / np.maximum(tp + fp, 1), tp / np.maximum(tp + fn, 1)
            return np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1), 0.0)
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)
    if metric == "pearson":
        yc, pc = y - y.mean(-1, keepdims=True), p - p.mean(-1, keepdims=True)
        den = np.sqrt((yc * yc).sum(-1) * (pc * pc).sum(-1))
        return np.where(den > 0, (yc * pc).sum(-1) / np.where(den > 0, den, 1), 0.0)
    return np.array([METRICS[metric](a, b) for a, b in zip(y, p, strict=True)])


def _metric_losses(task: Task, labels: np.ndarray, preds: list[np.ndarray], full: np.ndarray,
                   confidence: float) -> tuple[list[float], list[float], list[float], float]:
    """Labelled: (metric per setting, point loss, bootstrap upper bound, full-depth metric). The resamples
    are shared, so each bound is of the paired difference with full depth on the same rows."""
    name, n = task.main_metric, len(labels)
    idx = np.random.default_rng(BOOT_SEED).integers(0, n, size=(BOOTSTRAP, n))
    y = labels[idx]
    full_m, full_b = METRICS[name](labels, full), _resampled(name, y, full[idx])
    metrics, losses, bounds = [], [], []
    for p in preds:
        m = METRICS[name](labels, p)
        loss = 100 * (full_m - m)
        boot = 100 * (full_b - _resampled(name, y, p[idx])) if np.any(p != full) else np.zeros(1)
        metrics.append(m)
        losses.append(loss)
        # an exit that beats full depth on these rows is taken as no better than it (a gain on a sample is
        # noise the choice would exploit): the bound is the bootstrap's margin above max(loss, 0)
        bounds.append(max(loss, 0.0) + max(float(np.quantile(boot, confidence)) - loss, 0.0))
    return metrics, losses, bounds, full_m


def _agreement_losses(task_type: str, preds: list[np.ndarray], full: np.ndarray,
                      confidence: float) -> tuple[list[float], list[float]]:
    """No labels: % of rows whose exit prediction differs from full depth's, and its exact one-sided
    binomial (Clopper-Pearson) upper bound."""
    from scipy.stats import beta

    n = len(full)
    tol = REGRESSION_AGREE * float(np.ptp(full)) if task_type == "regression" else 0.0
    losses, bounds = [], []
    for p in preds:
        k = int(np.sum(np.abs(p - full) > tol)) if task_type == "regression" else int(np.sum(p != full))
        losses.append(100 * k / n)
        bounds.append(100.0 if k >= n else 100 * float(beta.ppf(confidence, k + 1, n - k)))
    return losses, bounds


def _pass_in_sequence(cands: list[Candidate], families: list[str], max_loss: float) -> None:
    """Fixed-sequence testing per policy family: settings from most to least conservative (average exit),
    each passes only if every more conservative one of its family passed, so a setting that is lucky on
    these rows after a failing neighbour is not picked (Learn-then-Test; CALM, Schuster et al. 2022)."""
    for fam in dict.fromkeys(families):
        failed = False
        for c in sorted((c for c, f in zip(cands, families, strict=True) if f == fam), key=lambda c: -c.avg_exit):
            c.tested = not failed
            c.passed = not failed and c.bound <= max_loss + 1e-9
            failed = failed or not c.passed


def select(task: Task, labels: np.ndarray | None, ramp_logits: np.ndarray, exit_prob: np.ndarray | None,
           specs: list[str], task_type: str, max_loss: float, confidence: float = 0.9,
           live: list[int] | None = None, agreement: bool = False) -> Selection:
    """The most aggressive setting of ``specs`` (lowest average exit) whose loss upper bound at
    ``confidence`` is within ``max_loss`` points, else full depth. Pure: reads no files.

    ``ramp_logits`` [N, L, C] (and ``exit_prob`` [N, L]) come from a full-depth run. ``live`` (0-based
    layers; the last always stops) restricts which ramps may exit: a plan's exit points, replayed as
    ``simulate(..., live=)`` does (specs still name real layers). ``agreement`` (or no ``labels``) bounds
    disagreement with the full-depth prediction instead of the metric: no labels needed."""
    n, layers, _ = ramp_logits.shape
    if not 0.5 <= confidence < 1:
        raise NanotrtError(f"--confidence {confidence}: use a probability in [0.5, 1), e.g. 0.9")
    if max_loss < 0:
        raise NanotrtError(f"--max-loss {max_loss}: use a loss >= 0 points (e.g. 0.5)")
    if n == 0:
        raise NanotrtError("no held-out rows to calibrate on: train with --holdout N (e.g. 1000) or give --texts")
    if live is not None and any(not 0 <= i < layers for i in live):
        raise NanotrtError(f"live ramps {live} are outside 0..{layers - 1}")
    agreement = agreement or labels is None
    full = predictions_from_logits(task, ramp_logits[:, -1])
    runs = [simulate(parse_exit(s, task_type, layers), ramp_logits, exit_prob, live=live) for s in specs]
    preds = [predictions_from_logits(task, out) for _, out in runs]
    metrics: list[float | None]
    if agreement:
        losses, bounds = _agreement_losses(task_type, preds, full, confidence)
        metrics, full_m = [None] * len(specs), None
    else:
        assert labels is not None
        got, losses, bounds, full_m = _metric_losses(task, labels, preds, full, confidence)
        metrics = list(got)
    floor = resolution(n, confidence)  # a bootstrap cannot see mistakes these rows happen not to contain
    cands = [Candidate(s, loss, max(b, floor) if e.mean() < layers else b, float(e.mean()), m)
             for s, (e, _), loss, b, m in zip(specs, runs, losses, bounds, metrics, strict=True)]
    _pass_in_sequence(cands, [_family(s, task_type, layers) for s in specs], max_loss)
    return _decide(cands, n, layers, confidence, max_loss, "agreement" if agreement else "metric", full_m)


def bound_passing(task: Task, labels: np.ndarray | None, ramp_logits: np.ndarray, exit_prob: np.ndarray | None,
                  task_type: str, max_loss: float, confidence: float = 0.9,
                  agreement: bool = False) -> Callable[[list[str], list[int] | None], list[str]]:
    """`nanotrt plan`'s loss test with the bound: (specs, live ramps or None) -> the settings shown to be
    within ``max_loss`` on those ramps."""
    def passing(specs: list[str], live: list[int] | None) -> list[str]:
        return select(task, labels, ramp_logits, exit_prob, specs, task_type, max_loss, confidence, live,
                      agreement).passing
    return passing


def _decide(cands: list[Candidate], n: int, layers: int, confidence: float, max_loss: float, criterion: str,
            full_m: float | None) -> Selection:
    ok = [c for c in cands if c.passed]
    best = min(ok, key=lambda c: (round(c.avg_exit, 6), c.bound)) if ok else None
    point = min((c for c in cands if c.loss <= max_loss + 1e-9), key=lambda c: round(c.avg_exit, 6), default=None)
    need = rows_for_resolution(max_loss, confidence)
    bounded = n >= need
    suggest = None
    if point is not None and (best is None or best.avg_exit > point.avg_exit + 1e-9):
        # rows at which the point estimate's choice would pass: a bootstrap width shrinks as 1/sqrt(rows),
        # the resolution floor as 1/rows
        width, room = point.bound - point.loss, max_loss - point.loss
        floor_only = point.bound <= resolution(n, confidence) + 1e-12
        suggest = None if room <= 0 else max(rows_for_resolution(room, confidence),
                                             0 if floor_only else math.ceil(n * (width / room) ** 2))
    elif not bounded:
        suggest = need
    if not bounded:
        note = (f"cannot bound: {n} held-out rows cannot show any early exit within {max_loss:g} points at "
                f"confidence {confidence:g} (needs >= {need}); kept full depth")
    elif best is None:
        note = f"no setting's {confidence:g} upper bound is within {max_loss:g} points; kept full depth"
    else:
        note = f"{best.spec}: loss {best.loss:.2f} points, upper bound {best.bound:.2f} at confidence {confidence:g}"
    if suggest:
        note += f"; the bound is too wide to exit earlier: try --holdout {suggest}"
    if best is None or not bounded:
        return Selection("none", 0.0, 0.0, float(layers), n, confidence, max_loss, criterion, full_m, bounded,
                         note, suggest, cands)
    return Selection(best.spec, best.loss, best.bound, best.avg_exit, n, confidence, max_loss, criterion, full_m,
                     True, note, suggest, cands)


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


def text_split(task: Task, path: str | Path) -> Split:
    """Unlabelled in-domain text for --agreement: one example a line (sentence pairs: tab-separated)."""
    try:
        lines = [ln.rstrip("\r\n") for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise NanotrtError(f"cannot read --texts {path}: {e}; give a UTF-8 file with one example a line") from e
    if len(task.text_cols) == 1:
        return Split(task, lines, None, np.zeros(len(lines)), 0)
    cols = [ln.split("\t") for ln in lines]
    bad = next((i for i, c in enumerate(cols) if len(c) != 2), None)
    if bad is not None:
        raise NanotrtError(f"--texts {path} line {bad + 1}: {task.name} takes sentence pairs, one pair a line "
                           "separated by a tab")
    return Split(task, [c[0] for c in cols], [c[1] for c in cols], np.zeros(len(lines)), 0)


def calibrate_exit(artifact: str | Path, task: str | None = None, max_loss: float = 0.5,
                   families: tuple[str, ...] = FAMILIES, precision: str = "fp32", data_dir: str | None = None,
                   batch_size: int = 32, write: bool = True, confidence: float = 0.9, agreement: bool = False,
                   texts: str | Path | None = None) -> dict[str, Any]:
    """Pick and (with ``write``) store the artifact's default exit; returns the calibration record.

    Held-out train rows (labelled: bootstrap bound of the metric loss), or with ``agreement`` /
    ``texts`` (unlabelled lines) the bound on disagreement with full depth. Dev is never read."""
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(artifact)
    t = get_task(task or m.task or "")
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise NanotrtError(f"unknown policy family {bad[0]}: use {', '.join(FAMILIES)}")
    if texts is not None:
        split = text_split(t, texts)
        rec: dict[str, Any] = {"split": str(texts), "count": len(split), "seen_in_training": False}
    else:
        split, rec = holdout_split(m, t, data_dir)
    if not len(split):
        raise NanotrtError(f"no rows to calibrate on in {rec['split']}: give at least one example")
    logits, probs = ramp_outputs_on(Path(artifact), split, precision, batch_size)
    specs = candidates(m.task_type, m.num_layers, probs is not None, families)
    sel = select(t, None if texts is not None else split.labels, logits, probs, specs, m.task_type, max_loss,
                 confidence, agreement=agreement)
    full = sel.full_depth
    chosen = {"spec": sel.spec, "metric": full if sel.spec == "none" else next(
        c.metric for c in sel.candidates if c.spec == sel.spec), "avg_exit": sel.avg_exit, "loss": sel.loss,
        "bound": sel.bound}
    record = {"task": t.name, "metric": "agreement" if sel.criterion == "agreement" else t.main_metric,
              "holdout": rec, "precision": precision, "date": time.strftime("%Y-%m-%d %H:%M"),
              "default_exit": sel.spec, "chosen": chosen, **sel.record()}
    if write:  # under the writer lock, onto the manifest as it is now (a build may have run meanwhile)
        from nanotrt.runtime.fsutil import writer_lock

        with writer_lock(m.root):
            fresh = Manifest.load(m.root)
            fresh.data["default_exit"] = sel.spec
            fresh.data["exit_calibration"] = record
            fresh.save()  # temp file + rename
    return record
