"""`nanotrt train`: off-ramp training on a GLUE task, on CPU.

- ``pabee``: encoder and all ramps jointly, loss = sum_i (i+1) * L_i / sum_i (i+1) (Zhou et al. 2020).
- ``deebert``: stage 1 trains encoder + final ramp; stage 2 freezes them and trains the other ramps
  (Xin et al. 2020).
Regression tasks (STS-B) use MSE on every ramp. The checkpoint is written atomically with a per-ramp
dev metric table (``ramp_metrics.json``) beside it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nanotrt.pipeline.glue import Split, Task, compute_metrics, get_task, predictions_from_logits, read_split
from nanotrt.pipeline.model import OffRampModel, check_max_length, load_model, load_tokenizer, save_checkpoint
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.progress import console, progress
from torch import nn

METHODS = ("pabee", "deebert")


@dataclass
class TrainConfig:
    task: str
    method: str = "pabee"
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4
    ramp_lr: float | None = None  # deebert stage 2 (ramps only); default 10x lr
    warmup: float = 0.1  # fraction of steps
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 42
    limit: int | None = None  # train examples
    eval_limit: int | None = None
    grad_accum: int = 1
    pooling: str | None = None
    threads: int | None = None
    data_dir: str | None = None


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Encoded:
    """Pre-tokenized split; batches are padded to their own longest row."""

    def __init__(self, tokenizer: Any, split: Split, max_length: int):
        enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length,
                        return_token_type_ids=True)
        self.ids = enc["input_ids"]
        self.types = enc["token_type_ids"]
        self.labels = split.labels
        self.pad = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(self.ids[i])
            ids[r, :n] = torch.tensor(self.ids[i])
            types[r, :n] = torch.tensor(self.types[i])
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                "labels": torch.from_numpy(self.labels[np.asarray(idx)])}


def ramp_losses(task: Task, logits: list[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
    if task.is_regression:
        return [nn.functional.mse_loss(lg[:, 0], labels.float()) for lg in logits]
    return [nn.functional.cross_entropy(lg, labels) for lg in logits]


@torch.no_grad()
def evaluate_ramps(model: OffRampModel, data: Encoded, task: Task, batch_size: int = 64) -> list[dict[str, float]]:
    """Dev metrics of every ramp (layer 1..N)."""
    model.eval()
    outs: list[list[np.ndarray]] = [[] for _ in range(model.num_layers)]
    order = np.argsort([len(x) for x in data.ids])  # length-sorted batches: less padding, faster
    for s in range(0, len(data), batch_size):
        b = data.batch(order[s:s + batch_size])
        for i, lg in enumerate(model(b["input_ids"], b["attention_mask"], b["token_type_ids"])):
            outs[i].append(lg.numpy())
    inv = np.argsort(order)
    return [compute_metrics(task, data.labels, predictions_from_logits(task, np.concatenate(o)[inv])) for o in outs]


def _run_stage(model: OffRampModel, data: Encoded, task: Task, cfg: TrainConfig, params: list[nn.Parameter],
               lr: float, weights: list[float], label: str) -> list[float]:
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / (cfg.batch_size * cfg.grad_accum))
    total = max(1, int(steps_per_epoch * cfg.epochs))
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    rng = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    seen, t0, step = 0, time.perf_counter(), 0
    wsum = sum(weights)
    model.train()
    with progress() as bar:
        job = bar.add_task(label, total=total, info="")
        while step < total:
            perm = rng.permutation(len(data))
            for s in range(0, len(perm), cfg.batch_size * cfg.grad_accum):
                chunk = perm[s:s + cfg.batch_size * cfg.grad_accum]
                opt.zero_grad(set_to_none=True)
                for a in range(0, len(chunk), cfg.batch_size):
                    b = data.batch(chunk[a:a + cfg.batch_size])
                    logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                    ls = ramp_losses(task, logits, b["labels"])
                    loss = torch.stack([w * lo for w, lo in zip(weights, ls, strict=True) if w]).sum() / wsum
                    (loss * len(b["labels"]) / len(chunk)).backward()
                    losses.append(loss.item())
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                step += 1
                seen += len(chunk)
                rate = seen / (time.perf_counter() - t0)
                bar.update(job, advance=1, info=f"loss {np.mean(losses[-20:]):.4f}  {rate:.0f} ex/s")
                if step >= total:
                    break
    model.eval()
    return losses


def train(model_dir: str | Path, out_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train off-ramps; write the checkpoint and ``ramp_metrics.json`` atomically to ``out_dir``."""
    if cfg.method not in METHODS:
        raise NanotrtError(f"unknown method '{cfg.method}': use pabee or deebert")
    if cfg.grad_accum < 1 or cfg.batch_size < 1 or cfg.epochs <= 0:
        raise NanotrtError("batch size, gradient accumulation and epochs must be positive")
    task = get_task(cfg.task)
    train_split = read_split(task, "train", cfg.data_dir, limit=cfg.limit)
    dev_split = read_split(task, "dev", cfg.data_dir, limit=cfg.eval_limit)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    model = load_model(model_dir, num_labels=task.num_labels, pooling=cfg.pooling,
                       labels=list(task.label_names), task=task.name, init_seed=None)
    if model.cfg.num_labels != task.num_labels:
        raise NanotrtError(f"'{model_dir}' has {model.cfg.num_labels} labels but {task.name} needs {task.num_labels}")
    model.cfg.max_length = cfg.max_length
    model.cfg.task = task.name
    model.cfg.labels = list(task.label_names)  # also when continuing from a nanotrt checkpoint
    check_max_length(model.config, cfg.max_length)
    tok = load_tokenizer(model_dir, int(model.config.vocab_size))
    tr, dev = Encoded(tok, train_split, cfg.max_length), Encoded(tok, dev_split, cfg.max_length)
    console.print(f"{task.name}: {len(tr)} train / {len(dev)} dev examples"
                  f" (skipped malformed: {train_split.skipped} / {dev_split.skipped}); method {cfg.method}")
    n = model.num_layers
    t0 = time.perf_counter()
    params = list(model.parameters())
    if cfg.method == "pabee":
        losses = _run_stage(model, tr, task, cfg, params, cfg.lr, [i + 1.0 for i in range(n)], "train (pabee)")
    else:
        losses = _run_stage(model, tr, task, cfg, params, cfg.lr, [0.0] * (n - 1) + [1.0], "stage 1 (final)")
        for p in model.parameters():
            p.requires_grad_(False)
        ramp_params = [p for r in model.ramps[:-1] for p in r.parameters()]
        for p in ramp_params:
            p.requires_grad_(True)
        losses += _run_stage(model, tr, task, cfg, ramp_params, cfg.ramp_lr or cfg.lr * 10,
                             [1.0] * (n - 1) + [0.0], "stage 2 (ramps)")
        for p in model.parameters():
            p.requires_grad_(True)
    train_s = time.perf_counter() - t0
    metrics = evaluate_ramps(model, dev, task)
    report = {"task": task.name, "metric": task.main_metric, "metrics": list(task.metrics), "train_examples": len(tr), "dev_examples": len(dev),
              "train_seconds": round(train_s, 1), "config": asdict(cfg),
              "ramps": [{"layer": i + 1, **m} for i, m in enumerate(metrics)],
              "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}
    save_checkpoint(model, out_dir, tokenizer_src=model_dir, extra_json={"ramp_metrics.json": report})
    return report


def print_ramp_table(report: dict[str, Any]) -> None:
    """The per-ramp dev metric table of a training report (x100)."""
    from nanotrt.runtime.progress import table_console
    from rich.table import Table

    main = report["metric"]
    keys = [main, *(k for k in report["ramps"][0] if k not in ("layer", main))]
    note = f"; {main} is GLUE's main metric for {report['task']}" if len(keys) > 1 else ""
    table = Table(title=f"{report['task']} dev, per ramp ({report['train_seconds']} s training{note})")
    for col in ("layer", *keys):
        table.add_column(f"{col} (main)" if col == main and len(keys) > 1 else col)
    for row in report["ramps"]:
        table.add_row(str(row["layer"]), *(f"{100 * row[k]:.2f}" for k in keys))
    table_console.print(table)
