"""Exit policies, decided between engine runs from the ramp output of the layer just run.

Vectorised over a batch: ``init(batch)`` makes per-sample state, ``step(state, layer, logits, rows, ctx)``
gets the logits of the rows still running (``rows`` are their indices into the original batch) and
returns which of them stop now. ``ctx`` (optional, a ``StepContext``) carries the ramp's other outputs
(``exit_prob`` of a learned halting head), the current padded length and the batch's start time, for the
policies that need them (learned, deadline). The runner always stops everything at the last layer.

Specs compose with commas: ``patience=3``, ``patience=2,delta=0.05`` (regression), ``learned=0.5``,
``patience=2,maxprob=0.9`` (PCEE-style: only confident ramps count towards patience),
``deadline=8ms`` and ``patience=3,deadline=8ms`` (exit when confident, never later than the deadline).
numpy only; a device profile (``runtime/profile.py``) feeds the deadline rule when the artifact has one.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError

SPECS = ("none, depth=N, entropy=T, maxprob=P, patience=N[,delta=D][,maxprob=P|entropy=T], learned=P, "
         "deadline=8ms, or a rule plus ,deadline=8ms")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) in nats, as DeeBERT computes it."""
    p = softmax(logits.astype(np.float64))
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)


@dataclass
class StepContext:
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # other ramp outputs, rows still running
    seq: int = 0  # padded length of the rows still running
    started: float = 0.0  # time.perf_counter() when this batch started (before the embeddings)
    now: float | None = None  # the clock at this step (None: read time.perf_counter())

    def clock(self) -> float:
        return time.perf_counter() if self.now is None else self.now


class ExitPolicy:
    spec: str = "none"
    regression_ok = True
    needs: tuple[str, ...] = ()  # ramp outputs besides logits this policy reads (e.g. "exit_prob")

    def init(self, batch: int) -> dict[str, np.ndarray]:
        return {}

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        return np.zeros(len(rows), dtype=bool)

    def validate(self, num_layers: int | None) -> None:
        """Raise NanotrtError naming the valid range when a setting cannot work."""


def _range_error(spec: str, valid: str) -> NanotrtError:
    return NanotrtError(f"exit policy '{spec}' is out of range: {valid}")


@dataclass
class FixedDepth(ExitPolicy):
    """Stop at layer ``depth`` (1-based); ``none`` runs the full depth."""

    depth: int = 0

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"depth={self.depth}" if self.depth else "none"

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        return np.full(len(rows), self.depth > 0 and layer + 1 >= self.depth)

    def validate(self, num_layers: int | None) -> None:
        if self.depth < 0 or (num_layers and self.depth > num_layers):
            raise _range_error(self.spec, f"depth is 1..{num_layers or 'layers'}")


@dataclass
class Entropy(ExitPolicy):
    """DeeBERT: stop when the ramp's prediction entropy falls below ``threshold``."""

    threshold: float = 0.3
    regression_ok = False
    name = "entropy"

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"{self.name}={self.threshold:g}"

    def confident(self, logits: np.ndarray) -> np.ndarray:
        return entropy(logits) < self.threshold

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        return self.confident(logits)

    def validate(self, num_layers: int | None) -> None:
        if not self.threshold > 0 or not math.isfinite(self.threshold):
            raise _range_error(self.spec, "entropy threshold is > 0 nats (at most ln(labels): 0.693 for 2 labels)")


@dataclass
class MaxProb(Entropy):
    """Stop when the ramp's top softmax probability reaches ``threshold``."""

    threshold: float = 0.9
    name = "maxprob"

    def confident(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits.astype(np.float64)).max(axis=-1) >= self.threshold

    def validate(self, num_layers: int | None) -> None:
        if not 0 < self.threshold <= 1:
            raise _range_error(self.spec, "maxprob is a probability in (0, 1]")


@dataclass
class Learned(ExitPolicy):
    """Stop when the ramp's learned halting head (``train --compute-penalty``) says exit with
    probability >= ``threshold``."""

    threshold: float = 0.5
    needs = ("exit_prob",)

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"learned={self.threshold:g}"

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        if ctx is None or "exit_prob" not in ctx.outputs:
            raise NanotrtError("exit policy 'learned' needs the ramps' exit_prob output: export a model "
                               "trained with --compute-penalty")
        return np.asarray(ctx.outputs["exit_prob"]).reshape(len(rows)) >= self.threshold

    def validate(self, num_layers: int | None) -> None:
        if not 0 < self.threshold <= 1:
            raise _range_error(self.spec, "learned is an exit probability in (0, 1]")


@dataclass
class Patience(ExitPolicy):
    """PABEE: stop once ``patience`` consecutive ramps agree with the one before them (same label; for
    regression, |delta prediction| < ``delta``). Counter semantics follow the PABEE reference code.

    With ``confidence`` (PCEE-BERT style) a ramp only counts when it is also confident (max-prob or
    entropy rule); an unconfident ramp resets the counter."""

    patience: int = 3
    delta: float = 0.1
    confidence: Entropy | None = None

    @property
    def spec(self) -> str:  # type: ignore[override]
        extra = f",delta={self.delta:g}" if self.delta != 0.1 else ""
        extra += f",{self.confidence.spec}" if self.confidence is not None else ""
        return f"patience={self.patience}{extra}"

    @property
    def regression_ok(self) -> bool:  # type: ignore[override]
        return self.confidence is None

    def init(self, batch: int) -> dict[str, np.ndarray]:
        return {"count": np.zeros(batch, dtype=np.int64), "prev": np.full(batch, np.nan)}

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        pred = logits[:, 0].astype(np.float64) if logits.shape[1] == 1 else logits.argmax(-1).astype(np.float64)
        prev = state["prev"][rows]
        if logits.shape[1] == 1:
            same = np.abs(pred - prev) < self.delta
        else:
            same = pred == prev
        if self.confidence is not None:
            same &= self.confidence.confident(logits)
        count = np.where(same, state["count"][rows] + 1, 0)
        state["count"][rows] = count
        state["prev"][rows] = pred
        return count >= self.patience

    def validate(self, num_layers: int | None) -> None:
        top = f"{num_layers - 1}" if num_layers else "layers-1"
        if self.patience < 1 or (num_layers and self.patience > num_layers - 1):
            raise _range_error(self.spec, f"patience is 1..{top} (the last layer always stops)")
        if not self.delta > 0:
            raise _range_error(f"{self.spec},delta={self.delta:g}", "delta is > 0")
        if self.confidence is not None:
            self.confidence.validate(num_layers)


@dataclass
class Deadline(ExitPolicy):
    """Stop at the deepest ramp whose predicted finish fits ``seconds`` after the batch started; with
    ``rule``, stop earlier when that rule says so.

    The next step's cost (layer + ramp) comes from the device profile (``nanotrt profile``) when one is
    bound, plus a running correction: the amount by which measured steps exceed the profile here (runner
    overhead, other load). Without a profile it is the measured step time itself. Both are exponentially
    weighted mean + ``margin`` standard deviations, so jitter makes the rule more careful. Every step
    updates the estimate (layer 1's interval counts the embeddings too), so a slow start is forgotten."""

    seconds: float = 0.008
    rule: ExitPolicy | None = None
    profile: Any = None  # step_seconds(layer, batch, seq) [, embeddings_seconds(batch, seq)]
    alpha: float = 0.2  # weight of the newest measurement in the running estimate
    margin: float = 2.0  # predict mean + margin * std of the measurements: the deadline is about the tail
    _est: float = float("nan")  # online: mean step seconds; with a profile: mean excess over it
    _var: float = 0.0

    @property
    def spec(self) -> str:  # type: ignore[override]
        head = f"{self.rule.spec}," if self.rule is not None and self.rule.spec != "none" else ""
        return f"{head}deadline={self.seconds * 1000:g}ms"

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.rule.needs if self.rule is not None else ()

    @property
    def regression_ok(self) -> bool:  # type: ignore[override]
        return self.rule is None or self.rule.regression_ok

    def init(self, batch: int) -> dict[str, np.ndarray]:
        state = self.rule.init(batch) if self.rule is not None else {}
        state["_last"] = np.full(1, np.nan)  # clock at the previous step of this batch
        return state

    def _predicted(self, layer: int, rows: int, seq: int) -> float:
        """Profile time of step ``layer`` (layer 0 includes the embeddings)."""
        t = float(self.profile.step_seconds(layer, rows, seq))
        if layer == 0 and hasattr(self.profile, "embeddings_seconds"):
            t += float(self.profile.embeddings_seconds(rows, seq))
        return t

    def next_cost(self, state: dict[str, np.ndarray], layer: int, rows: int, ctx: StepContext, now: float) -> float:
        """Update the running estimate with the step just measured; predict seconds for step ``layer + 1``."""
        last = float(state["_last"][0])
        measured = now - (ctx.started if math.isnan(last) else last)
        sample = measured - self._predicted(layer, rows, ctx.seq) if self.profile is not None else measured
        if math.isnan(self._est):
            self._est = sample
        else:  # exponentially weighted mean and variance
            diff = sample - self._est
            self._est += self.alpha * diff
            self._var = (1 - self.alpha) * (self._var + self.alpha * diff * diff)
        guard = self._est + self.margin * math.sqrt(self._var)
        if self.profile is None:
            return guard
        return float(self.profile.step_seconds(layer + 1, rows, ctx.seq)) + max(0.0, guard)

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray,
             ctx: StepContext | None = None) -> np.ndarray:
        stop = (self.rule.step(state, layer, logits, rows, ctx) if self.rule is not None
                else np.zeros(len(rows), dtype=bool))
        if ctx is None:  # no clock (offline replay): the confidence rule alone
            return stop
        now = ctx.clock()
        late = now - ctx.started + self.next_cost(state, layer, len(rows), ctx, now) > self.seconds
        state["_last"][0] = now
        return stop | late

    def validate(self, num_layers: int | None) -> None:
        if not self.seconds > 0 or not math.isfinite(self.seconds):
            raise _range_error(self.spec, "deadline is a time > 0, e.g. 8ms, 0.5s, 800us")
        if self.rule is not None:
            self.rule.validate(num_layers)


# --- parsing --------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(us|ms|s)?\s*", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2) or "ms"]


def _depth(n: int) -> FixedDepth:
    if n < 1:
        raise _range_error(f"depth={n}", "depth is 1..layers (none runs every layer)")
    return FixedDepth(n)


_RULES: dict[str, Callable[[str], ExitPolicy]] = {
    "none": lambda v: FixedDepth(0),
    "depth": lambda v: _depth(int(v)),
    "entropy": lambda v: Entropy(float(v)),
    "maxprob": lambda v: MaxProb(float(v)),
    "patience": lambda v: Patience(int(v)),
    "learned": lambda v: Learned(float(v)),
}


def _build(items: list[tuple[str, str]]) -> ExitPolicy:
    keys = [k for k, _ in items]
    opts = dict(items)
    if len(set(keys)) != len(keys) or any(k not in (*_RULES, "delta", "deadline") for k in keys):
        raise ValueError("keys")
    if any(k != "none" and not v for k, v in items):
        raise ValueError("value")
    deadline = opts.pop("deadline", None)
    rule: ExitPolicy | None = None
    if "patience" in opts:
        p = Patience(int(opts.pop("patience")))
        if "delta" in opts:
            p.delta = float(opts.pop("delta"))
        conf = [k for k in ("maxprob", "entropy") if k in opts]
        if len(conf) == 1:
            p.confidence = _RULES[conf[0]](opts.pop(conf[0]))  # type: ignore[assignment]
        rule = p
    elif len(opts) == 1 and "delta" not in opts:
        (k, v), = opts.items()
        rule = _RULES[k](v)
        opts = {}
    if opts or (rule is None and deadline is None):
        raise ValueError("combination")
    if deadline is None:
        assert rule is not None
        return rule
    return Deadline(parse_duration(deadline), rule)


def parse_exit(spec: str | ExitPolicy | None, task_type: str = "classification",
               num_layers: int | None = None) -> ExitPolicy:
    """Read an exit spec (see the module docstring), check it fits the task and ``num_layers``."""
    if isinstance(spec, ExitPolicy):
        policy = spec
    else:
        text = (spec or "none").strip().lower().replace(" ", "")
        try:
            items = [(k, v) for k, _, v in (kv.partition("=") for kv in text.split(","))]
            policy = _build(items)
        except ValueError as e:
            what = "" if str(e) in ("keys", "value", "combination") else "bad number, "
            raise NanotrtError(f"cannot read exit policy '{spec}': {what}use {SPECS}") from e
    policy.validate(num_layers)
    if task_type == "regression" and not policy.regression_ok:
        raise NanotrtError(f"exit policy '{policy.spec}' needs class probabilities; for regression use "
                           "patience=N[,delta=D] (optionally with ,deadline=...)")
    return policy


def bind_policy(policy: ExitPolicy, ramp_outputs: set[str], profile: Any | None = None) -> None:
    """Check the ramps provide what ``policy`` reads; give a deadline rule its device profile."""
    missing = [n for n in policy.needs if n not in ramp_outputs]
    if missing:
        raise NanotrtError(f"exit policy '{policy.spec}' needs the ramp output(s) {', '.join(missing)}, which "
                           "this artifact lacks: train with --compute-penalty and re-export")
    if isinstance(policy, Deadline) and profile is not None:
        policy.profile = profile
