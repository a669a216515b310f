"""Exit policies, decided between engine runs from the ramp output of the layer just run.

Vectorised over a batch: ``init(batch)`` makes per-sample state, ``step(state, layer, logits, rows)``
gets the logits of the rows still running (``rows`` are their indices into the original batch) and
returns which of them stop now. The runner always stops everything at the last layer. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) in nats, as DeeBERT computes it."""
    p = softmax(logits.astype(np.float64))
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)


class ExitPolicy:
    spec: str = "none"
    regression_ok = True

    def init(self, batch: int) -> dict[str, np.ndarray]:
        return {}

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows), dtype=bool)


@dataclass
class FixedDepth(ExitPolicy):
    """Stop at layer ``depth`` (1-based); ``none`` runs the full depth."""

    depth: int = 0

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"depth={self.depth}" if self.depth else "none"

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), self.depth > 0 and layer + 1 >= self.depth)


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

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.confident(logits)


@dataclass
class MaxProb(Entropy):
    """Stop when the ramp's top softmax probability reaches ``threshold``."""

    threshold: float = 0.9
    name = "maxprob"

    def confident(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits.astype(np.float64)).max(axis=-1) >= self.threshold


@dataclass
class Patience(ExitPolicy):
    """PABEE: stop once ``patience`` consecutive ramps agree with the one before them (same label; for
    regression, |delta prediction| < ``delta``). Counter semantics follow the PABEE reference code."""

    patience: int = 3
    delta: float = 0.1

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"patience={self.patience}"

    def init(self, batch: int) -> dict[str, np.ndarray]:
        return {"count": np.zeros(batch, dtype=np.int64), "prev": np.full(batch, np.nan)}

    def step(self, state: dict[str, np.ndarray], layer: int, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        pred = logits[:, 0].astype(np.float64) if logits.shape[1] == 1 else logits.argmax(-1).astype(np.float64)
        prev = state["prev"][rows]
        if logits.shape[1] == 1:
            same = np.abs(pred - prev) < self.delta
        else:
            same = pred == prev
        count = np.where(same, state["count"][rows] + 1, 0)
        state["count"][rows] = count
        state["prev"][rows] = pred
        return count >= self.patience


_POLICIES: dict[str, Any] = {
    "none": lambda v: FixedDepth(0),
    "depth": lambda v: FixedDepth(int(v)),
    "entropy": lambda v: Entropy(float(v)),
    "maxprob": lambda v: MaxProb(float(v)),
    "patience": lambda v: Patience(int(v)),
}


def parse_exit(spec: str | ExitPolicy | None, task_type: str = "classification") -> ExitPolicy:
    """``none``, ``depth=4``, ``entropy=0.3``, ``maxprob=0.9``, ``patience=3`` (``patience=3,delta=0.05``)."""
    if isinstance(spec, ExitPolicy):
        policy = spec
    else:
        text = (spec or "none").strip().lower()
        head, *extra = text.split(",")
        key, _, value = head.partition("=")
        if key not in _POLICIES or (key != "none" and not value):
            raise NanotrtError(f"cannot read exit policy '{spec}': use none, depth=N, entropy=T, maxprob=P or patience=N")
        try:
            policy = _POLICIES[key](value)
            for kv in extra:
                k, _, v = kv.partition("=")
                if k != "delta" or not isinstance(policy, Patience):
                    raise ValueError(kv)
                policy.delta = float(v)
        except ValueError:
            raise NanotrtError(f"cannot read exit policy '{spec}': bad number") from None
    if task_type == "regression" and not policy.regression_ok:
        raise NanotrtError(f"exit policy '{policy.spec}' needs class probabilities; for regression use patience=N")
    return policy
