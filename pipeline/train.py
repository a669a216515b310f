"""`nanotrt train`: off-ramp training on a GLUE task (CPU, or CUDA when present).

- ``pabee``: encoder and all ramps jointly, loss = sum_i (i+1) * L_i / sum_i (i+1) (Zhou et al. 2020).
- ``deebert``: stage 1 trains encoder + final ramp; stage 2 freezes them and trains the other ramps
  (Xin et al. 2020).
- ``distill`` (either method): ramps 1..N-1 also learn the final ramp's softened prediction,
  L_i = (1 - w) CE_i + w T^2 KL(p_N^T || p_i^T) (self-distillation as in FastBERT); regression uses
  MSE to the final prediction.
- ``compute_penalty`` lambda: every ramp gets a halting head h_i; q_i = h_i prod_{j<i} (1 - h_j) is the
  probability of exiting at layer i (h_N = 1), and the loss adds sum_i q_i (loss_i + lambda * i / N):
  expected loss plus lambda times the expected fraction of layers run (ACT-style ponder cost).
Regression tasks (STS-B) use MSE on every ramp. ``holdout`` rows of the train split (a seeded sample)
are kept out of training for `nanotrt calibrate-exit`. The checkpoint is written atomically with a
per-ramp dev metric table (``ramp_metrics.json``) beside it.
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
    distill: bool = False
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    compute_penalty: float | None = None
    exit_lr_scale: float = 10.0  # halting heads: small linear layers on detached features learn at 10x lr
    holdout: int = 0  # train rows kept out of training, for calibrate-exit
    device: str = "auto"  # auto (cuda when available) | cpu | cuda[:N]


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
    """Per-sample loss of every ramp ([B] each): cross-entropy, or squared error for regression."""
    if task.is_regression:
        return [nn.functional.mse_loss(lg[:, 0], labels.float(), reduction="none") for lg in logits]
    return [nn.functional.cross_entropy(lg, labels, reduction="none") for lg in logits]


def distill_losses(task: Task, logits: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """Per-sample distillation loss of ramps 1..N-1 towards the final ramp (its prediction detached)."""
    teacher = logits[-1].detach()
    if task.is_regression:
        return [(lg[:, 0] - teacher[:, 0]) ** 2 for lg in logits[:-1]]
    t = temperature
    soft = torch.softmax(teacher / t, -1)
    return [nn.functional.kl_div(torch.log_softmax(lg / t, -1), soft, reduction="none").sum(-1) * t * t
            for lg in logits[:-1]]


def exit_distribution(halt_logits: list[torch.Tensor]) -> torch.Tensor:
    """q [B, N]: probability of exiting at each layer, q_i = h_i prod_{j<i} (1 - h_j), h_N = 1; rows sum to 1."""
    a = torch.stack(halt_logits, 1)  # [B, N]
    log_h = torch.cat([nn.functional.logsigmoid(a[:, :-1]), torch.zeros_like(a[:, -1:])], 1)
    log_stay = nn.functional.logsigmoid(-a)
    before = torch.cumsum(log_stay, 1) - log_stay  # sum_{j<i} log(1 - h_j)
    return torch.exp(log_h + before)


def batch_loss(model: OffRampModel, b: dict[str, torch.Tensor], task: Task, cfg: TrainConfig,
               weights: list[float]) -> torch.Tensor:
    """The training objective of one batch (see the module docstring)."""
    penalty = cfg.compute_penalty is not None
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], return_exit=penalty)
    logits, halts = out if penalty else (out, None)
    per = ramp_losses(task, logits, b["labels"])
    if cfg.distill:
        w = cfg.distill_weight
        kd = distill_losses(task, logits, cfg.distill_temperature)
        per = [(1 - w) * ce + w * k for ce, k in zip(per[:-1], kd, strict=True)] + [per[-1]]
    loss = torch.stack([w * lo.mean() for w, lo in zip(weights, per, strict=True) if w]).sum() / sum(weights)
    if halts is not None:
        n = model.num_layers
        q = exit_distribution(halts)
        depth = torch.arange(1, n + 1, device=q.device, dtype=q.dtype) / n
        # Only the layers this stage trains (deebert stage 1 trains the final ramp alone).
        live = torch.tensor([w > 0 for w in weights], device=q.device)
        cost = torch.stack(per, 1) + float(cfg.compute_penalty or 0.0) * depth
        loss = loss + (q * cost * live).sum(1).mean()
    return loss


@torch.no_grad()
def ramp_outputs(model: OffRampModel, data: Encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Every ramp's logits [N, layers, labels] and, with exit heads, exit probabilities [N, layers]."""
    model.eval()
    dev = next(model.parameters()).device
    logits, probs = [], []
    order = np.argsort([len(x) for x in data.ids])  # length-sorted batches: less padding, faster
    for s in range(0, len(data), batch_size):
        b = {k: v.to(dev) for k, v in data.batch(order[s:s + batch_size]).items()}
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], return_exit=model.cfg.exit_head)
        lg, halts = out if model.cfg.exit_head else (out, None)
        logits.append(torch.stack(lg, 1).float().cpu().numpy())
        if halts is not None:
            probs.append(torch.sigmoid(torch.stack(halts, 1)).float().cpu().numpy())
    inv = np.argsort(order)
    return np.concatenate(logits)[inv], (np.concatenate(probs)[inv] if probs else None)


def evaluate_ramps(model: OffRampModel, data: Encoded, task: Task, batch_size: int = 64) -> list[dict[str, float]]:
    """Dev metrics of every ramp (layer 1..N)."""
    logits, _ = ramp_outputs(model, data, batch_size)
    return [compute_metrics(task, data.labels, predictions_from_logits(task, logits[:, i]))
            for i in range(logits.shape[1])]


def _run_stage(model: OffRampModel, data: Encoded, task: Task, cfg: TrainConfig, params: list[nn.Parameter],
               lr: float, weights: list[float], label: str) -> list[float]:
    from transformers import get_linear_schedule_with_warmup

    dev = next(model.parameters()).device
    heads = {id(p) for r in model.ramps for p in (r.exit.parameters() if r.exit is not None else [])}  # type: ignore[union-attr]
    groups = [{"params": [p for p in params if p.requires_grad and id(p) not in heads], "lr": lr},
              {"params": [p for p in params if p.requires_grad and id(p) in heads], "lr": lr * cfg.exit_lr_scale}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / (cfg.batch_size * cfg.grad_accum))
    total = max(1, int(steps_per_epoch * cfg.epochs))
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    rng = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    seen, t0, step = 0, time.perf_counter(), 0
    model.train()
    with progress() as bar:
        job = bar.add_task(label, total=total, info="")
        while step < total:
            perm = rng.permutation(len(data))
            for s in range(0, len(perm), cfg.batch_size * cfg.grad_accum):
                chunk = perm[s:s + cfg.batch_size * cfg.grad_accum]
                opt.zero_grad(set_to_none=True)
                for a in range(0, len(chunk), cfg.batch_size):
                    b = {k: v.to(dev) for k, v in data.batch(chunk[a:a + cfg.batch_size]).items()}
                    loss = batch_loss(model, b, task, cfg, weights)
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NanotrtError(f"--device {name}: this torch has no CUDA device; use --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise NanotrtError(f"unknown device '{name}': use auto, cpu or cuda[:N]") from e


def check_config(cfg: TrainConfig) -> None:
    if cfg.method not in METHODS:
        raise NanotrtError(f"unknown method '{cfg.method}': use pabee or deebert")
    if cfg.grad_accum < 1 or cfg.batch_size < 1 or cfg.epochs <= 0:
        raise NanotrtError("batch size, gradient accumulation and epochs must be positive")
    if not 0.0 <= cfg.distill_weight <= 1.0 or cfg.distill_temperature <= 0:
        raise NanotrtError("--distill-weight must be in [0, 1] and --distill-temperature > 0")
    if cfg.compute_penalty is not None and cfg.compute_penalty < 0:
        raise NanotrtError(f"--compute-penalty {cfg.compute_penalty}: use a cost >= 0 (0.1-1 is typical)")
    if cfg.holdout < 0:
        raise NanotrtError("--holdout must be >= 0 train rows")


def read_train_dev(task: Task, cfg: TrainConfig) -> tuple[Split, Split, dict[str, Any]]:
    """Train split minus the held-out rows (then ``limit``), dev split, and the holdout record."""
    from nanotrt.pipeline.calibrate_exit import HOLDOUT_SEED, holdout_indices, subset

    if not cfg.holdout:
        train = read_split(task, "train", cfg.data_dir, limit=cfg.limit)
        return train, read_split(task, "dev", cfg.data_dir, limit=cfg.eval_limit), {}
    full = read_split(task, "train", cfg.data_dir)
    dev = read_split(task, "dev", cfg.data_dir, limit=cfg.eval_limit)
    if cfg.holdout >= len(full):
        raise NanotrtError(f"--holdout {cfg.holdout} leaves no training rows ({task.name} train has {len(full)})")
    held = holdout_indices(len(full), cfg.holdout, HOLDOUT_SEED)
    rest = np.setdiff1d(np.arange(len(full)), held)[: cfg.limit]
    record = {"split": "train", "count": cfg.holdout, "seed": HOLDOUT_SEED, "rows": len(full)}
    return subset(full, rest), dev, record


def train(model_dir: str | Path, out_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train off-ramps; write the checkpoint and ``ramp_metrics.json`` atomically to ``out_dir``."""
    check_config(cfg)
    task = get_task(cfg.task)
    train_split, dev_split, holdout = read_train_dev(task, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    model = load_model(model_dir, num_labels=task.num_labels, pooling=cfg.pooling,
                       labels=list(task.label_names), task=task.name, init_seed=None,
                       exit_head=cfg.compute_penalty is not None)
    if model.cfg.num_labels != task.num_labels:
        raise NanotrtError(f"'{model_dir}' has {model.cfg.num_labels} labels but {task.name} needs {task.num_labels}")
    model.cfg.max_length = cfg.max_length
    model.cfg.task = task.name
    model.cfg.holdout = holdout
    model.cfg.labels = list(task.label_names)  # also when continuing from a nanotrt checkpoint
    check_max_length(model.config, cfg.max_length)
    model.to(device)
    tok = load_tokenizer(model_dir, int(model.config.vocab_size))
    tr, dev = Encoded(tok, train_split, cfg.max_length), Encoded(tok, dev_split, cfg.max_length)
    extras = "".join([", distilled" if cfg.distill else "",
                      f", compute penalty {cfg.compute_penalty}" if cfg.compute_penalty is not None else "",
                      f", {cfg.holdout} train rows held out" if cfg.holdout else ""])
    console.print(f"{task.name}: {len(tr)} train / {len(dev)} dev examples (skipped malformed: "
                  f"{train_split.skipped} / {dev_split.skipped}); method {cfg.method}{extras}; {device}")
    t0 = time.perf_counter()
    losses = _train_method(model, tr, task, cfg)
    train_s = time.perf_counter() - t0
    metrics = evaluate_ramps(model, dev, task)
    report = {"task": task.name, "metric": task.main_metric, "metrics": list(task.metrics), "train_examples": len(tr),
              "dev_examples": len(dev), "train_seconds": round(train_s, 1), "device": str(device), "config": asdict(cfg),
              "ramps": [{"layer": i + 1, **m} for i, m in enumerate(metrics)],
              "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}
    if model.cfg.exit_head:  # how the learned rule (exit_prob >= 0.5) would exit on dev
        logits, probs = ramp_outputs(model, dev)
        assert probs is not None
        report["learned_exit_dev"] = _learned_summary(task, dev.labels, logits, probs)
    model.cpu()
    save_checkpoint(model, out_dir, tokenizer_src=model_dir, extra_json={"ramp_metrics.json": report})
    return report


def _train_method(model: OffRampModel, tr: Encoded, task: Task, cfg: TrainConfig) -> list[float]:
    n = model.num_layers
    params = list(model.parameters())
    if cfg.method == "pabee":
        return _run_stage(model, tr, task, cfg, params, cfg.lr, [i + 1.0 for i in range(n)], "train (pabee)")
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
    return losses


def _learned_summary(task: Task, labels: np.ndarray, logits: np.ndarray, probs: np.ndarray,
                     threshold: float = 0.5) -> dict[str, float]:
    n = logits.shape[1]
    fire = probs >= threshold
    fire[:, -1] = True
    layer = fire.argmax(1)
    chosen = logits[np.arange(len(layer)), layer]
    m = compute_metrics(task, labels, predictions_from_logits(task, chosen))
    return {"threshold": threshold, "avg_exit_layer": float(layer.mean() + 1), "layers": n, **m}


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
