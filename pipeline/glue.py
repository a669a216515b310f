"""GLUE tasks in their original TSV formats, and the metrics GLUE reports.

Readers use QUOTE_NONE (GLUE text contains stray quotes) and skip-and-count malformed lines (QQP and
MNLI have some in the wild) instead of crashing. numpy/scipy only, so bench and calibration can use it.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nanotrt.runtime.errors import NanotrtError

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Task:
    name: str
    dir: str
    text_cols: tuple[str | int, ...]  # header names, or indices for headerless files
    label_col: str | int
    labels: tuple[str, ...]  # the label values in the file, in class-id order; () for regression
    metrics: tuple[str, ...]  # GLUE's, in the leaderboard's order: the first one is the task's main metric
    header: bool = True
    files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv"})
    names: tuple[str, ...] = ()  # human label names per class id, where the file's values are numbers

    @property
    def label_names(self) -> tuple[str, ...]:
        """What a model trained on this task calls its classes (``score`` for regression)."""
        return self.names or self.labels or ("score",)

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


_NLI3 = ("contradiction", "entailment", "neutral")
_ENT2 = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", "CoLA", (3,), 1, ("0", "1"), ("mcc",), header=False, names=("unacceptable", "acceptable")),
    Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), names=("negative", "positive")),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"),
         names=("not_equivalent", "equivalent")),
    Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", (), ("pearson", "spearman")),
    Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"),
         names=("not_duplicate", "duplicate")),
    Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", _NLI3, ("accuracy",),
         files={"train": "train.tsv", "dev": "dev_matched.tsv"}),
    Task("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", _NLI3, ("accuracy",),
         files={"train": "train.tsv", "dev": "dev_mismatched.tsv"}),
    Task("qnli", "QNLI", ("question", "sentence"), "label", _ENT2, ("accuracy",)),
    Task("rte", "RTE", ("sentence1", "sentence2"), "label", _ENT2, ("accuracy",)),
    Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",),
         names=("not_entailment", "entailment")),
]}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_mm": "mnli-mm", "mnli-mismatched": "mnli-mm"}


def label_names(task: str | None, labels: list[str]) -> list[str]:
    """The label names to publish for a checkpoint trained on ``task``: the task's names where the
    checkpoint still carries the file's raw values (checkpoints trained before names existed), else its
    own (a user's HF checkpoint keeps its ``id2label``)."""
    t = TASKS.get(ALIASES.get((task or "").lower(), (task or "").lower()))
    if t is not None and tuple(labels) == (t.labels or ("score",)):
        return list(t.label_names)
    return list(labels)


def get_task(name: str) -> Task:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise NanotrtError(f"unknown task '{name}': use one of {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Split:
    task: Task
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # int64 class ids, or float32 scores for regression
    skipped: int = 0  # malformed lines skipped

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.task, self.texts[:n], self.pairs[:n] if self.pairs else None, self.labels[:n], self.skipped)


def default_data_dir() -> Path:
    env = os.environ.get("NANOTRT_GLUE_DIR")
    if env:
        return Path(env)
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        cand = base.parent / "shared" / "data" / "glue"
        if cand.is_dir():
            return cand
    return Path.cwd() / "glue"


def task_file(task: Task, split: str, data_dir: str | Path | None = None) -> Path:
    root = Path(data_dir) if data_dir else default_data_dir()
    path = root / task.dir / task.files[split]
    if not path.is_file():
        # every file of that folder's tasks (MNLI: train, dev_matched and dev_mismatched)
        files = dict.fromkeys(f for t in TASKS.values() if t.dir == task.dir for f in t.files.values())
        expected = ", ".join(str(root / task.dir / f) for f in files)
        raise NanotrtError(
            f"GLUE {task.name} {split} split not found: expected {expected}; download the GLUE data and put "
            f"the {task.dir}/ folder under {root} (or pass --data-dir / set NANOTRT_GLUE_DIR)"
        )
    return path


def read_split(task: Task | str, split: str = "dev", data_dir: str | Path | None = None,
               limit: int | None = None) -> Split:
    task = get_task(task) if isinstance(task, str) else task
    if limit is not None and limit < 1:
        raise NanotrtError(f"asked for {limit} {task.name} examples: use a positive number (or none for all)")
    path = task_file(task, split, data_dir)
    try:
        return _read_rows(task, path, limit)
    except UnicodeDecodeError as e:
        raise NanotrtError(f"{path} is not UTF-8 (byte 0x{e.object[e.start]:02x}): re-download the GLUE "
                           f"{task.dir}/ folder or convert the file to UTF-8") from e
    except csv.Error as e:
        raise NanotrtError(f"{path} is not a TSV file ({e}): re-download the GLUE {task.dir}/ folder") from e


def _columns(task: Task, path: Path, header: list[str]) -> tuple[list[int], int]:
    if not task.header:
        return list(task.text_cols), int(task.label_col)  # type: ignore[arg-type]
    try:
        cols = [header.index(c) for c in task.text_cols]  # type: ignore[arg-type]
        return cols, header.index(task.label_col)  # type: ignore[arg-type]
    except ValueError as e:
        raise NanotrtError(f"{path} does not have the GLUE {task.name} header (needs columns "
                           f"{list(task.text_cols)} and '{task.label_col}', found {header[:8]}): "
                           f"is it the {task.dir}/ file of another task?") from e


def _read_rows(task: Task, path: Path, limit: int | None) -> Split:
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[float] = []
    skipped = 0
    label_index = {lab: i for i, lab in enumerate(task.labels)}
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC starts with a BOM
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, []) if task.header else []
        cols, lcol = _columns(task, path, header)
        width = len(header) if task.header else max([*cols, lcol]) + 1
        for row in rows:
            if task.name.startswith("mnli") and task.header:
                lcol_row = len(row) - 1  # gold_label is the last column; label1..5 vary in count
                ok = len(row) >= max(cols) + 2
            else:
                lcol_row = lcol
                ok = len(row) == width if task.header else len(row) >= width
            # Malformed lines and lines with an empty sentence are skipped and counted, not guessed at.
            if not ok or any(not row[c].strip() for c in cols):
                skipped += 1
                continue
            raw = row[lcol_row].strip()
            if task.is_regression:
                try:
                    value = float(raw)
                except ValueError:
                    skipped += 1
                    continue
            elif raw in label_index:
                value = label_index[raw]
            else:
                skipped += 1
                continue
            texts.append(row[cols[0]])
            if len(cols) > 1:
                pairs.append(row[cols[1]])
            labels.append(value)
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        need = f"{width} tab-separated columns" + ("" if task.header else f" (text in column {cols[0] + 1}, "
                                                                          f"label in column {lcol + 1})")
        raise NanotrtError(f"{path} has no usable GLUE {task.name} rows ({skipped} malformed): each line needs "
                           f"{need} and a label in {list(task.labels) or 'numbers'}")
    dtype = np.float32 if task.is_regression else np.int64
    return Split(task, texts, pairs if len(task.text_cols) > 1 else None, np.array(labels, dtype=dtype), skipped)


# --- metrics -----------------------------------------------------------------------------------

def matthews_corrcoef(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y).astype(int), np.asarray(p).astype(int)
    tp = float(np.sum((y == 1) & (p == 1)))
    tn = float(np.sum((y == 0) & (p == 0)))
    fp = float(np.sum((y == 0) & (p == 1)))
    fn = float(np.sum((y == 1) & (p == 0)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den else 0.0


def f1_score(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y).astype(int), np.asarray(p).astype(int)
    tp = float(np.sum((y == 1) & (p == 1)))
    prec = tp / max(float(np.sum(p == 1)), 1.0)
    rec = tp / max(float(np.sum(y == 1)), 1.0)
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def _pearson(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(y, p)[0]) if np.std(p) > 0 else 0.0


def _spearman(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(y, p)[0]) if np.std(p) > 0 else 0.0


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: float(np.mean(np.asarray(y) == np.asarray(p))),
    "mcc": matthews_corrcoef,
    "f1": f1_score,
    "pearson": _pearson,
    "spearman": _spearman,
}


def predictions_from_logits(task: Task, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def compute_metrics(task: Task, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """GLUE metrics (as fractions; multiply by 100 for the leaderboard convention)."""
    return {m: METRICS[m](labels, preds) for m in task.metrics}
