"""The streaming runner: walks the per-layer engines of an artifact under a memory budget, runs each
layer's off-ramp, asks the exit policy, and compacts the batch so finished samples stop computing.

Two schedules over the same walk (embeddings, layer(0), ramp(0), layer(1), ...):
- latency: one micro-batch at a time walks every layer (a single request, or everything resident);
- block (FlexGen's layer-major order): a block of up to K examples, in micro-batches of ``batch_size``,
  runs layer i for every micro-batch still active before layer i+1 is touched, so one engine load serves the
  whole block. K is the largest block whose activations fit the budget next to the largest graph.
Both give the same predictions (each micro-batch is computed exactly as in the latency path).

Device-side: imports numpy, tokenizers and the chosen backend only (no torch, no transformers).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend, get_backend
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.exits import ExitPolicy, FixedDepth, StepContext, bind_policy, parse_exit, softmax
from nanotrt.runtime.residency import ResidencyCache, fmt_bytes, parse_size
from nanotrt.runtime.tokenize import Tokenizer, as_inputs, check_count

MODES = ("auto", "latency", "block")
MAX_BLOCK = 512  # examples per block when the budget would allow more: loads are amortized long before


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
    mode: str = "latency"  # the schedule predict() used: latency or block
    blocks: int = 0  # blocks (latency mode: micro-batches) walked
    max_block: int = 0  # most examples walked together
    variant: str = ""  # the manifest variant that ran

    @property
    def avg_exit_layer(self) -> float:
        return self.layers_executed / max(self.samples, 1)

    @property
    def peak_activation_bytes(self) -> int:
        return int(self.cache.get("peak_activation_bytes", 0))


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


@dataclass(frozen=True)
class Activations:
    """Upper estimate of the activation bytes the runtime holds, from the model's shape.

    held: what the runner keeps per token of a waiting example (hidden states fp32, mask and ids int64).
    working: what one engine call allocates on top, per micro-batch (QKV, context, residual and LayerNorm
    outputs, the FFN intermediate before and after its activation, three copies of the attention scores)."""

    hidden: int
    intermediate: int
    heads: int

    @classmethod
    def from_manifest(cls, m: Manifest) -> Activations:
        cfg, h = m.data.get("config", {}), int(m.data["hidden_size"])
        inter = cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * h
        return cls(h, int(inter), int(cfg.get("num_attention_heads") or cfg.get("n_heads") or 1))

    def held(self, rows: int, seq: int) -> int:
        return rows * seq * (4 * self.hidden + 32)

    def working(self, rows: int, seq: int) -> int:
        return 4 * rows * seq * (7 * self.hidden + 2 * self.intermediate) + 12 * rows * self.heads * seq * seq

    def block(self, sizes: Sequence[tuple[int, int]]) -> int:
        """A block of micro-batches given as (rows, seq): all of them held, the largest one working."""
        return sum(self.held(b, s) for b, s in sizes) + max(self.working(b, s) for b, s in sizes)


def resolve_budget(text: str | int | None, manifest: Manifest, variant: str, reserved: int = 0) -> int | None:
    """``all`` / None -> unlimited; ``3layers`` -> room for 3 of the largest graphs of the variant
    (embeddings included) plus one example's activations at full length plus the backend's fixed working set
    (``reserved``: TensorRT scratch and I/O buffers); else bytes, all of that included."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("all", "", "none")):
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*layers?\s*", text.lower())
    if m and int(m.group(1)) < 1:
        raise NanotrtError(f"memory budget '{text}' holds no graph: use at least 1layer")
    if m:
        spec = registry.get(variant) if registry.known(variant) else None
        per_layer = spec.source if spec is not None and spec.kind == "plan" and spec.source else variant
        biggest = max(int(manifest.graphs[n]["bytes"]) for n in manifest.schedule(per_layer).names())
        seq = int(manifest.tokenizer.get("max_length", 128))
        return int(m.group(1)) * biggest + Activations.from_manifest(manifest).block([(1, seq)]) + reserved
    return parse_size(text)


@dataclass
class _Batch:
    """One tokenized micro-batch walking the layers; rows leave as they exit."""

    index: np.ndarray  # each example's row in the result arrays (the caller's order)
    enc: dict[str, np.ndarray]
    active: np.ndarray  # rows still running (indices into this micro-batch)
    state: dict[str, np.ndarray]  # exit-policy state
    hidden: np.ndarray | None = None
    mask: np.ndarray | None = None
    logits: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # other ramp outputs (e.g. exit_prob)
    started: float = 0.0  # perf_counter() before its embeddings: the deadline rule's clock starts here

    def feeds(self) -> dict[str, np.ndarray]:
        assert self.hidden is not None and self.mask is not None, "embeddings run first"
        return {"hidden_states": self.hidden, "attention_mask": self.mask}

    @property
    def shape(self) -> tuple[int, int]:
        ids = self.enc["input_ids"]
        return (len(self.active), ids.shape[1] if self.mask is None else self.mask.shape[1])


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


# A fork()ed child inherits the lock as the parent held it (held forever if another thread was inside a call);
# every live runner gets a fresh one there. (The residency cache re-creates its prefetch thread the same way.)
_LIVE: weakref.WeakSet[Runner] = weakref.WeakSet()


def _locks_after_fork() -> None:
    for r in list(_LIVE):
        r.__dict__["_call_lock"] = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_locks_after_fork)
# --- end thread safety ---------------------------------------------------------------------------


def runner_variant(manifest: Manifest, variant: str | None, precision: str, backend: str,
                   memory_budget: str | int | None) -> str:
    """The variant a runner with these settings runs (`nanotrt profile` measures the same one). Nlayers budgets
    count per-layer graphs, so they resolve before the variant (and a plan) is chosen."""
    planned = manifest.resolve_variant(variant, precision, backend)
    return manifest.resolve_variant(variant, precision, backend, resolve_budget(memory_budget, manifest, planned))


def engines_swapped(manifest: Manifest, variant: str, budget: int | None, reserved: int = 0) -> bool:
    """Whether ``budget`` swaps engines: it cannot hold every graph of the walk next to one full-length
    example's activations and the backend's working set. The runner and `nanotrt profile` both ask this."""
    if budget is None:
        return False
    graphs = dict.fromkeys(s.graph for s in manifest.schedule(variant).steps())
    full = Activations.from_manifest(manifest).block([(1, int(manifest.tokenizer.get("max_length", 128)))])
    return budget < sum(int(manifest.graphs[n]["bytes"]) for n in graphs) + full + reserved


class Runner:
    """Streams an artifact's engines through a backend. ``own_backend``: close the backend with the runner
    (``from_artifact`` sets it for a backend it made from a name; a backend object passed in stays the
    caller's, as in Polygraphy's runners). Construction that fails releases what it made; after ``close()``
    (final, idempotent) every call is an error."""

    def __init__(self, manifest: Manifest, backend: Backend, memory_budget: str | int | None = "all",
                 exit: str | ExitPolicy | None = None, variant: str | None = None, prefetch: bool = True,
                 precision: str = "fp32", own_backend: bool = False):
        self.backend, self.own_backend, self.closed = backend, own_backend, False
        try:
            self._setup(manifest, backend, memory_budget, exit, variant, prefetch, precision)
        except BaseException:
            self._release()
            raise
        _LIVE.add(self)

    def _setup(self, manifest: Manifest, backend: Backend, memory_budget: str | int | None,
               exit: str | ExitPolicy | None, variant: str | None, prefetch: bool, precision: str) -> None:
        self.manifest = manifest
        self.variant = runner_variant(manifest, variant, precision, backend.name, memory_budget)
        manifest.hold(self.variant)  # a rebuild elsewhere keeps this variant's files while the runner lives
        self.schedule = manifest.schedule(self.variant)
        # exit=None: the variant's own (a plan's rule, re-chosen on its live ramps), else the artifact's.
        info = manifest.data["variants"][self.variant]
        self.exit_source, default = next((src, rule) for src, rule in (
            ("given", exit), ("plan", info.get("default_exit")), ("calibrated", manifest.data.get("default_exit")),
            ("none: no calibrated default_exit (run `nanotrt calibrate-exit` or `nanotrt plan`)", "none"))
            if rule is not None)
        self.policy = parse_exit(default, manifest.task_type, manifest.num_layers)
        self.tokenizer = Tokenizer.from_manifest(manifest)
        self.n = manifest.num_layers
        self.labels = manifest.labels
        table = manifest.word_table()  # verified, shape-checked, memory-mapped
        # A plain ndarray view of the mapping: indexing a np.memmap subclass costs a finalizer call per batch.
        self.word_table = None if table is None else table.view(np.ndarray)
        # The walk: one step per engine call (per-layer, fused layer+ramp, or a plan's segments).
        self.steps = self.schedule.steps()
        order = [s.graph for s in self.steps]
        self._inputs = [[i["name"] for i in manifest.graphs[s.graph]["inputs"]] for s in self.steps]
        self._bind_exit(manifest, backend)
        self.acts = Activations.from_manifest(manifest)
        self.reserved = backend.reserve(manifest, self.schedule.names())  # e.g. TensorRT scratch + I/O
        self.budget = resolve_budget(memory_budget, manifest, self.variant, self.reserved)
        sizes = {name: int(manifest.graphs[name]["bytes"]) for name in order}
        self.largest = max(sizes.values())
        self.streaming = engines_swapped(manifest, self.variant, self.budget, self.reserved)
        if self.budget is not None and self.budget < self.reserved + self.largest + self.acts.block([(1, 1)]):
            raise NanotrtError(f"memory budget {fmt_bytes(self.budget)} is smaller than the largest graph plus "
                               f"activations plus the backend's working set ({fmt_bytes(self.reserved)}: scratch "
                               f"and I/O buffers): use at least {fmt_bytes(self._minimum(self.tokenizer.max_length))} "
                               f"(1layer: any input up to {self.tokenizer.max_length} tokens)")
        # The cache budgets engines and activations; the backend's fixed working set comes off the top.
        engines = None if self.budget is None else self.budget - self.reserved
        self.cache = ResidencyCache(backend, manifest, order, engines, prefetch=prefetch)
        # Swapped engines hold no more than their manifest bytes, also in block mode where a block amortizes
        # the loads: ORT's prepacked weight copies would overrun the budget (block mode measured 312 MB
        # peak RSS with prepacking vs 239 MB for the same budget without).
        backend.configure(swapping=self.streaming)
        self._prefetch = [self._prefetch_after(k) for k in range(len(self.steps))]
        # full depth: no policy call per ramp (a subclass, e.g. a recorder, still gets every call)
        self._never_exits = type(self.policy) is FixedDepth and self.policy.depth == 0

    def _bind_exit(self, manifest: Manifest, backend: Backend) -> None:
        """Ramp outputs the policy reads must exist; a deadline rule gets this device's profile."""
        from nanotrt.runtime.profile import load_profile

        outs = {o["name"] for o in manifest.graphs[self.steps[-1].graph].get("outputs", [])}
        bind_policy(self.policy, outs, load_profile(manifest, self.variant, backend.name))

    @classmethod
    def from_artifact(cls, artifact: str | Path, backend: str | Backend = "onnxruntime",
                      memory_budget: str | int | None = "all", exit: str | ExitPolicy | None = None,
                      variant: str | None = None, prefetch: bool = True, precision: str = "fp32",
                      **backend_options: Any) -> Runner:
        manifest = Manifest.load(artifact)
        if not isinstance(backend, str):
            return cls(manifest, backend, memory_budget, exit, variant, prefetch, precision)
        be = get_backend(backend, **backend_options)  # made here: the runner owns it (and frees it on error)
        return cls(manifest, be, memory_budget, exit, variant, prefetch, precision, own_backend=True)

    def describe_plan(self) -> dict[str, Any] | None:
        """A plan variant's segments, live ramps and predicted latency (None for per-layer variants)."""
        plan = self.manifest.data["variants"][self.variant].get("plan")
        if not plan:
            return None
        return {"segments": [f"{s['start'] + 1}-{s['end']}{'*' if s['ramp'] else ''}" for s in plan["segments"]],
                "live_ramps": plan["live_ramps"], "predicted_ms": plan["predicted_ms"], "planned_for": plan["memory_budget"]}

    def describe_budget(self) -> str:
        return "all" if self.budget is None else fmt_bytes(self.budget)

    # --- the walk --------------------------------------------------------------------------
    def _prefetch_after(self, k: int) -> tuple[int, ...]:
        """Steps to load while step k computes: the next two (one after an exit point, where the batch may
        end); past the last step, the first one of the next batch. Nothing when every engine stays resident."""
        if not self.streaming:
            return ()
        ahead = 1 if self.steps[k].ramp else 2
        return tuple(dict.fromkeys(p if p < len(self.steps) else 0 for p in range(k + 1, k + 1 + ahead)))

    def _token_feeds(self, b: _Batch, names: list[str]) -> dict[str, np.ndarray]:
        b.mask = b.enc["attention_mask"].astype(np.int64)
        feeds = {"input_ids": b.enc["input_ids"], "token_type_ids": b.enc["token_type_ids"], "attention_mask": b.mask}
        if self.word_table is not None:  # the word table is indexed on the host: only touched rows get resident
            feeds["inputs_embeds"] = np.ascontiguousarray(self.word_table[b.enc["input_ids"]], dtype=np.float32)
        return {k: feeds[k] for k in names}

    def _run_step(self, k: int, live: list[_Batch]) -> None:
        """Step k for every live micro-batch, its engine acquired once for all of them (and the next steps'
        engines loading meanwhile). Runs per engine call: kept free of per-call allocations it can avoid
        (benchmarks/results/step_overhead.md)."""
        step, names = self.steps[k], self._inputs[k]
        eng = self.cache.acquire(k)
        try:
            for p in self._prefetch[k]:
                self.cache.prefetch(p)
            for b in live:
                out = self.backend.run(eng, self._token_feeds(b, names) if step.embeds else b.feeds())
                hidden = out.pop("hidden_states_out", None)
                hidden = out.pop("hidden_states", None) if hidden is None else hidden  # the embeddings' output
                if hidden is not None:
                    b.hidden = hidden
                if step.ramp:
                    b.logits, b.extras = out.pop("logits"), out
        finally:
            self.cache.release(k)

    def _exit(self, i: int, b: _Batch, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Record ramp i's logits, ask the policy, drop the rows that stop (and padding no row needs)."""
        out_logits, out_layer, ramp_logits = out
        logits, rows = b.logits, b.index[b.active]
        assert logits is not None and b.mask is not None
        ramp_logits[rows, i] = logits
        ctx = StepContext(b.extras, b.mask.shape[1], b.started)
        if i == self.n - 1:
            stop = np.ones(len(b.active), bool)
        elif self._never_exits:
            return
        else:
            stop = self.policy.step(b.state, i, logits, b.active, ctx)
        if stop.any():
            out_logits[rows[stop]] = logits[stop]
            out_layer[rows[stop]] = i + 1
            keep = ~stop
            b.active = b.active[keep]
            if len(b.active):  # a plan's last segment outputs no hidden states: nobody is left after it
                assert b.hidden is not None
                b.hidden, b.mask = b.hidden[keep], b.mask[keep]
                # Right padding: drop columns no remaining row needs, so later layers do less work.
                width = int(b.mask.sum(1).max())
                b.hidden, b.mask = np.ascontiguousarray(b.hidden[:, :width]), np.ascontiguousarray(b.mask[:, :width])

    def _walk(self, batches: list[_Batch], out: tuple[np.ndarray, np.ndarray, np.ndarray], stats: RunStats) -> None:
        """Walk a block of micro-batches step by step (a single micro-batch is the latency path)."""
        self.cache.reserve_activations(self.acts.block([b.shape for b in batches]))
        stats.blocks += 1
        stats.max_block = max(stats.max_block, sum(len(b.active) for b in batches))
        started = time.perf_counter()
        for b in batches:
            b.started = started  # the deadline rule's clock starts before the embeddings
        for k, step in enumerate(self.steps):
            live = [b for b in batches if len(b.active)]
            if not live:
                break
            t = time.perf_counter()
            self._run_step(k, live)
            for b in live:
                stats.layers_executed += len(b.active) * (step.end - step.start)
                if step.ramp:
                    self._exit(step.end - 1, b, out)
            dt = time.perf_counter() - t
            stats.compute_s += dt
            if step.end:
                stats.layer_time_s[step.end - 1] += dt

    def _new_batch(self, enc: dict[str, np.ndarray], index: np.ndarray) -> _Batch:
        n = len(enc["input_ids"])
        return _Batch(index, enc, np.arange(n), self.policy.init(n))

    @staticmethod
    def _outputs(n: int, layers: int, labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.zeros((n, labels), dtype=np.float32), np.zeros(n, dtype=np.int64),
                np.full((n, layers, labels), np.nan, dtype=np.float32))

    @_serialized
    def run_encoded(self, enc: dict[str, np.ndarray],
                    stats: RunStats | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run one tokenized batch. Returns logits of each sample's exit ramp [B, L], its exit layer [B]
        (1-based) and every ramp's logits [B, layers, L] (NaN after the exit)."""
        self._check_open()
        stats = stats or RunStats()
        if len(stats.layer_time_s) < self.n:
            stats.layer_time_s = [0.0] * self.n
        out = self._outputs(len(enc["input_ids"]), self.n, len(self.labels))
        self._walk([self._new_batch(enc, np.arange(len(enc["input_ids"])))], out, stats)
        return out

    # --- scheduling many inputs ------------------------------------------------------------
    def _minimum(self, seq: int) -> int:
        """The smallest budget that runs one example of ``seq`` tokens."""
        return self.reserved + self.largest + self.acts.block([(1, seq)])

    def _fits(self, sizes: list[tuple[int, int]]) -> bool:
        return self.budget is None or self.acts.block(sizes) + self.largest + self.reserved <= self.budget

    def _micro_batches(self, texts: Sequence[str], pairs: Sequence[str] | None, order: np.ndarray,
                       batch_size: int) -> Iterator[_Batch]:
        """Tokenized micro-batches of ``batch_size`` examples taken in ``order`` (halved where one would not fit
        the budget alone)."""
        s = 0
        while s < len(order):
            size = min(batch_size, len(order) - s)
            while True:
                idx = order[s:s + size]
                enc = self.tokenizer([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx])
                if self._fits([enc["input_ids"].shape]):
                    break
                if size == 1:
                    seq = enc["input_ids"].shape[1]
                    raise NanotrtError(f"memory budget {self.describe_budget()} cannot hold an example of {seq} "
                                       f"tokens next to the largest graph: use at least {fmt_bytes(self._minimum(seq))}")
                size = max(1, size // 2)
            yield self._new_batch(enc, idx)
            s += size

    def _blocks(self, texts: Sequence[str], pairs: Sequence[str] | None, order: np.ndarray, batch_size: int,
                mode: str, block_size: int | None) -> Iterator[list[_Batch]]:
        """Latency: one micro-batch per block. Block: add micro-batches while their activations fit the budget
        next to the largest graph, up to ``block_size`` examples."""
        limit = block_size or MAX_BLOCK
        block: list[_Batch] = []
        for b in self._micro_batches(texts, pairs, order, batch_size):
            if block and (mode == "latency" or sum(len(x.active) for x in block) + len(b.active) > limit
                          or not self._fits([x.shape for x in (*block, b)])):
                yield block
                block = []
            block.append(b)
        if block:
            yield block

    def resolve_mode(self, mode: str, n: int, batch_size: int) -> str:
        if mode not in MODES:
            raise NanotrtError(f"unknown mode '{mode}': use {', '.join(MODES)}")
        if mode == "auto":  # layer-major pays only when engines are swapped and there is a queue
            return "block" if self.streaming and n > batch_size else "latency"
        return mode

    @_serialized
    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 1,
                mode: str = "auto", block_size: int | None = None) -> Result:
        """Classify ``texts`` (with ``pairs``) in micro-batches of ``batch_size``. ``mode``: ``latency``
        walks each micro-batch through all layers; ``block`` walks blocks of up to ``block_size`` examples
        (default: what the budget allows, at most MAX_BLOCK) layer by layer; ``auto`` picks block when
        engines are swapped and there are more inputs than one micro-batch. Same predictions either way."""
        self._check_open()
        texts, pairs = as_inputs(texts, pairs)  # one string is one text; types checked
        batch_size = check_count(batch_size, "batch size")
        block_size = None if block_size is None else check_count(block_size, "block size")
        mode = self.resolve_mode(mode, len(texts), batch_size)
        stats = RunStats(layer_time_s=[0.0] * self.n, mode=mode)
        out = self._outputs(len(texts), self.n, len(self.labels))
        # Micro-batches of similar length pad less: walk the inputs shortest first (characters stand in for
        # tokens); each example's results land in its own row, in the caller's order.
        order = np.argsort([len(t) + len(p) for t, p in zip(texts, pairs or [""] * len(texts), strict=True)],
                           kind="stable") if batch_size > 1 else np.arange(len(texts))
        t0 = time.perf_counter()
        try:
            for block in self._blocks(texts, pairs, order, batch_size, mode, block_size):
                self._walk(block, out, stats)
        finally:
            self.cache.reserve_activations(0)
        stats.wall_s = time.perf_counter() - t0
        stats.samples = len(texts)
        stats.cache = {**self.cache.stats.as_dict(), "backend_reserved_bytes": self.reserved}
        stats.variant = self.variant
        return Result(self.to_predictions(*out), *out, stats)

    def to_predictions(self, logits: np.ndarray, layers: np.ndarray, ramps: np.ndarray) -> list[Prediction]:
        preds = []
        regression = self.manifest.task_type == "regression"
        probs = logits if regression else softmax(logits.astype(np.float64))
        for lg, p, layer, rl in zip(logits, probs, layers, ramps, strict=True):
            ran = rl[: int(layer)]
            ran = ran[~np.isnan(ran).any(-1)]  # ramps that ran (a plan runs only its live ones)
            if regression:
                preds.append(Prediction(self.labels[0], 0, float(lg[0]), [float(lg[0])], int(layer),
                                        [float(x) for x in ran[:, 0]]))
            else:
                k = int(np.argmax(p))
                preds.append(Prediction(self.labels[k], k, float(p[k]), [float(x) for x in p], int(layer),
                                        [int(x) for x in ran.argmax(-1)]))
        return preds

    def _check_open(self) -> None:
        if self.closed:
            raise NanotrtError("this Runner is closed: make a new one (Runner.from_artifact) to run again")

    @_serialized
    def close(self) -> None:
        """Release the engines (and the backend if the runner owns it). Final: calls after it are errors;
        closing again does nothing."""
        if not self.closed:
            self.closed = True
            self._release()

    def _release(self) -> None:
        try:
            cache = self.__dict__.get("cache")  # absent when construction failed before it
            if cache is not None:
                cache.close()
        finally:
            if self.own_backend:
                self.backend.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
