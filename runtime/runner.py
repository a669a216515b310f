"""The streaming runner: walks the per-layer engines of an artifact under a memory budget, runs each
layer's off-ramp, asks the exit policy, and compacts the batch so finished samples stop computing.

Device-side: imports numpy, tokenizers and the chosen backend only (no torch, no transformers).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend, get_backend
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.exits import ExitPolicy, parse_exit, softmax
from nanotrt.runtime.residency import ResidencyCache, fmt_bytes, parse_size
from nanotrt.runtime.tokenize import Tokenizer


@dataclass
class Prediction:
    label: str
    label_id: int
    score: float  # probability of ``label`` (classification) or the predicted value (regression)
    probs: list[float]
    exit_layer: int
    ramp_preds: list[float] = field(default_factory=list)  # label id (or value) of every ramp that ran


@dataclass
class RunStats:
    samples: int = 0
    layers_executed: int = 0  # layer runs summed over samples
    layer_time_s: list[float] = field(default_factory=list)  # per layer, summed over batches
    compute_s: float = 0.0
    wall_s: float = 0.0
    cache: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # the manifest variant that ran

    @property
    def avg_exit_layer(self) -> float:
        return self.layers_executed / max(self.samples, 1)


@dataclass
class Result:
    predictions: list[Prediction]
    logits: np.ndarray  # [N, num_labels], logits of the ramp each sample exited at
    exit_layers: np.ndarray  # [N], 1-based
    ramp_logits: np.ndarray  # [N, layers, num_labels], NaN where a sample had already exited
    stats: RunStats

    @property
    def label_ids(self) -> np.ndarray:
        return np.array([p.label_id for p in self.predictions])


def resolve_budget(text: str | int | None, manifest: Manifest, variant: str, reserved: int = 0) -> int | None:
    """``all`` / None -> unlimited; ``3layers`` -> room for 3 of the largest layer graphs plus the backend's
    fixed working set (``reserved``); else bytes, the working set included."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("all", "", "none")):
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*layers?\s*", text.lower())
    if m:
        sched = manifest.schedule(variant)
        biggest = max(int(manifest.graphs[n]["bytes"]) for n in sched.layers)
        return int(m.group(1)) * biggest + reserved
    return parse_size(text)


# --- thread safety (issue 14) ------------------------------------------------------------------
# A Runner is NOT safe to drive from several threads at once: one residency-cache cursor, one walk.
# Instead of failing, its public calls are serialized: concurrent callers wait on a per-runner lock
# (re-entrant: predict calls run_encoded), so results equal a serial run and the budget holds.
# For parallel throughput, use one Runner per thread (each with its own budget).
_F = TypeVar("_F", bound=Callable[..., Any])


def _serialized(fn: _F) -> _F:
    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.setdefault("_call_lock", threading.RLock())  # dict.setdefault is atomic
        with lock:
            return fn(self, *args, **kwargs)
    return call  # type: ignore[return-value]
# --- end thread safety ---------------------------------------------------------------------------


class Runner:
    def __init__(self, manifest: Manifest, backend: Backend, memory_budget: str | int | None = "all",
                 exit: str | ExitPolicy | None = "none", variant: str | None = None, prefetch: bool = True,
                 precision: str = "fp32"):
        self.manifest = manifest
        self.backend = backend
        self.variant = variant or manifest.best_variant(precision, backend.name)  # rule: artifact.VARIANT_PREFERENCE
        self.schedule = manifest.schedule(self.variant)
        self.policy = parse_exit(exit, manifest.task_type)
        self.tokenizer = Tokenizer.from_manifest(manifest.root, manifest.tokenizer)
        self.n = manifest.num_layers
        self.labels = manifest.labels
        lookup = manifest.data.get("lookup")
        self.word_table = np.load(manifest.verify(lookup), mmap_mode="r") if lookup else None
        # Walk order: embeddings, layer 0, ramp 0, layer 1, ramp 1, ...
        order = [self.schedule.embeddings]
        for lay, ramp in zip(self.schedule.layers, self.schedule.ramps, strict=True):
            order += [lay, ramp]
        self.reserved = backend.reserve(manifest, self.schedule.names())  # e.g. TensorRT scratch + I/O
        self.budget = resolve_budget(memory_budget, manifest, self.variant, self.reserved)
        engines = None if self.budget is None else self.budget - self.reserved
        if engines is not None and self.reserved and engines < max(int(manifest.graphs[n]["bytes"]) for n in order):
            biggest = max(int(manifest.graphs[n]["bytes"]) for n in order)
            backend.close()
            raise NanotrtError(
                f"memory budget {fmt_bytes(self.budget or 0)} is smaller than the backend's working set "
                f"({fmt_bytes(self.reserved)}: scratch and I/O buffers) plus the largest graph "
                f"({fmt_bytes(biggest)}): use at least {fmt_bytes(self.reserved + biggest)}")
        self.cache = ResidencyCache(backend, manifest, order, engines, prefetch=prefetch)
        total = sum(self.cache.sizes.values())
        backend.configure(swapping=self.budget is not None and self.budget < total)
        emb_inputs = [i["name"] for i in manifest.graphs[self.schedule.embeddings]["inputs"]]
        self._emb_inputs = emb_inputs

    @classmethod
    def from_artifact(cls, artifact: str | Path, backend: str | Backend = "onnxruntime",
                      memory_budget: str | int | None = "all", exit: str | ExitPolicy | None = "none",
                      variant: str | None = None, prefetch: bool = True, precision: str = "fp32",
                      **backend_options: Any) -> Runner:
        manifest = Manifest.load(artifact)
        be = get_backend(backend, **backend_options) if isinstance(backend, str) else backend
        return cls(manifest, be, memory_budget, exit, variant, prefetch, precision)

    def describe_budget(self) -> str:
        return "all" if self.budget is None else fmt_bytes(self.budget)

    # --- running ---------------------------------------------------------------------------
    def _run(self, pos: int, feeds: dict[str, np.ndarray], prefetch: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
        engine = self.cache.acquire(pos)
        try:
            for p in prefetch:  # load the next graphs while this one computes
                self.cache.prefetch(p)
            return self.backend.run(engine, feeds)
        finally:
            self.cache.release(pos)

    @_serialized
    def run_encoded(self, enc: dict[str, np.ndarray],
                    stats: RunStats | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run one tokenized batch. Returns logits of each sample's exit ramp [B, L], its exit layer [B]
        (1-based) and every ramp's logits [B, layers, L] (NaN after the exit)."""
        stats = stats or RunStats()
        if len(stats.layer_time_s) < self.n:
            stats.layer_time_s = [0.0] * self.n
        ids, mask = enc["input_ids"], enc["attention_mask"].astype(np.int64)
        batch = ids.shape[0]
        out_logits = np.zeros((batch, len(self.labels)), dtype=np.float32)
        out_layer = np.zeros(batch, dtype=np.int64)
        ramp_logits = np.full((batch, self.n, len(self.labels)), np.nan, dtype=np.float32)
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "token_type_ids": enc["token_type_ids"]}
        if self.word_table is not None:
            feeds["inputs_embeds"] = np.ascontiguousarray(self.word_table[ids], dtype=np.float32)
        t0 = time.perf_counter()
        hidden = self._run(0, {k: feeds[k] for k in self._emb_inputs}, prefetch=(1, 2))["hidden_states"]
        stats.compute_s += time.perf_counter() - t0
        active = np.arange(batch)
        state = self.policy.init(batch)
        for i in range(self.n):
            lay, ramp = 1 + 2 * i, 2 + 2 * i
            nxt = (ramp + 1) % len(self.cache.order)
            t = time.perf_counter()
            hidden = self._run(lay, {"hidden_states": hidden, "attention_mask": mask}, (ramp, nxt))["hidden_states_out"]
            logits = self._run(ramp, {"hidden_states": hidden, "attention_mask": mask}, (nxt,))["logits"]
            dt = time.perf_counter() - t
            stats.layer_time_s[i] += dt
            stats.compute_s += dt
            stats.layers_executed += len(active)
            ramp_logits[active, i] = logits
            stop = np.ones(len(active), bool) if i == self.n - 1 else self.policy.step(state, i, logits, active)
            if stop.any():
                out_logits[active[stop]] = logits[stop]
                out_layer[active[stop]] = i + 1
                keep = ~stop
                active, hidden, mask = active[keep], hidden[keep], mask[keep]
                if len(active) == 0:
                    break
                # Right padding: drop columns no remaining row needs, so later layers do less work.
                width = int(mask.sum(1).max())
                hidden, mask = np.ascontiguousarray(hidden[:, :width]), np.ascontiguousarray(mask[:, :width])
        return out_logits, out_layer, ramp_logits

    @_serialized
    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 1) -> Result:
        if isinstance(texts, str):
            texts = [texts]
        if batch_size < 1:
            raise NanotrtError("batch size must be >= 1")
        stats = RunStats(layer_time_s=[0.0] * self.n)
        all_logits, all_layers, all_ramps = [], [], []
        t0 = time.perf_counter()
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], None if pairs is None else pairs[s:s + batch_size])
            lg, ly, rl = self.run_encoded(enc, stats)
            all_logits.append(lg)
            all_layers.append(ly)
            all_ramps.append(rl)
        stats.wall_s = time.perf_counter() - t0
        stats.samples = len(texts)
        stats.cache = {**self.cache.stats.as_dict(), "backend_reserved_bytes": self.reserved}
        stats.variant = self.variant
        logits = np.concatenate(all_logits) if all_logits else np.zeros((0, len(self.labels)), np.float32)
        layers = np.concatenate(all_layers) if all_layers else np.zeros(0, np.int64)
        ramps = np.concatenate(all_ramps) if all_ramps else np.zeros((0, self.n, len(self.labels)), np.float32)
        return Result(self.to_predictions(logits, layers, ramps), logits, layers, ramps, stats)

    def to_predictions(self, logits: np.ndarray, layers: np.ndarray, ramps: np.ndarray) -> list[Prediction]:
        preds = []
        regression = self.manifest.task_type == "regression"
        probs = logits if regression else softmax(logits.astype(np.float64))
        for lg, p, layer, rl in zip(logits, probs, layers, ramps, strict=True):
            ran = rl[: int(layer)]
            if regression:
                preds.append(Prediction(self.labels[0], 0, float(lg[0]), [float(lg[0])], int(layer),
                                        [float(x) for x in ran[:, 0]]))
            else:
                k = int(np.argmax(p))
                preds.append(Prediction(self.labels[k], k, float(p[k]), [float(x) for x in p], int(layer),
                                        [int(x) for x in ran.argmax(-1)]))
        return preds

    @_serialized
    def close(self) -> None:
        self.cache.close()
        self.backend.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
