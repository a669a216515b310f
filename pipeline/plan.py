"""`nanotrt plan`: exit-aware engine plans — where the engine boundaries and the live ramps are.

A per-layer walk pays one engine call per layer (and per ramp), although early layers almost never exit: a
call where nobody stops is pure overhead. A plan groups consecutive layers into *segments*, each compiled into
one graph that ends in its ramp where exits are allowed (the embeddings join the first segment). It is chosen
from three measurements:

1. the held-out ramp outputs (the train rows training kept out; never dev), replayed with the runner's exit
   policies (``calibrate_exit.simulate``);
2. this device's cost per graph and per engine call (``nanotrt profile`` of the source variant, plus the
   runner's own overhead per step, measured here);
3. the memory budget: each segment plus one full-length example's activations must fit.

For each candidate exit rule, dynamic programming over cut points minimizes the expected latency per example
(model: a row that would stop at a ramp that is not live stops at the next live one, so the share of rows
still running after layer j is known per rule); the exact holdout loss and latency of that plan are then
replayed and the fastest plan within ``--max-loss`` wins, its rule re-chosen on the ramps that remain.
Degenerate cases fall out of the same code: no exit allowed -> one segment; a one-layer budget -> per layer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError

# --- the model: costs, a plan, dynamic programming ------------------------------------------------------


@dataclass
class Costs:
    """Seconds per example at the holdout's typical shape. ``emb``/``layer``/``ramp``: compute of each graph
    without the per-call cost; ``call``: what one engine call costs on top (backend + runner step);
    ``exit``: the exit decision at a live ramp; ``load``: per graph kind, added when segments are swapped."""

    emb: float
    layer: list[float]
    ramp: list[float]
    call: float
    exit: float = 0.0
    load_emb: float = 0.0
    load_layer: list[float] = field(default_factory=list)
    load_ramp: list[float] = field(default_factory=list)
    streaming: bool = False

    @property
    def n(self) -> int:
        return len(self.layer)

    def segment(self, start: int, end: int, live: bool) -> float:
        t = self.call + sum(self.layer[start:end]) + (self.emb if start == 0 else 0.0)
        if live:
            t += self.ramp[end - 1] + self.exit
        if self.streaming:
            t += sum(self.load_layer[start:end]) + (self.load_emb if start == 0 else 0.0)
            t += self.load_ramp[end - 1] if live else 0.0
        return t


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    ramp: bool


def expected_cost(costs: Costs, segments: list[Segment], reach: np.ndarray) -> float:
    """Expected seconds per example: each segment's cost times the share of rows still running at its start
    (``reach[j]``: share still running after layer j under the all-ramps rule; monotone model)."""
    total, last_live = 0.0, 0
    for s in segments:
        total += float(reach[last_live]) * costs.segment(s.start, s.end, s.ramp)
        if s.ramp:
            last_live = s.end
    return total


def dp_plan(costs: Costs, reach: np.ndarray, fits: Callable[[int, int], bool]) -> tuple[float, list[Segment]]:
    """Minimum ``expected_cost`` over every cut set and live-ramp choice with each segment ``fits(start, end)``.
    State: (layers done, layers done at the last live ramp); O(L^3)."""
    n = costs.n
    best: dict[tuple[int, int], tuple[float, list[Segment]]] = {(0, 0): (0.0, [])}
    for j in range(n):
        for r in range(j + 1):
            if (j, r) not in best:
                continue
            cost, segs = best[(j, r)]
            for e in range(j + 1, n + 1):
                if not fits(j, e):
                    continue
                for live in ((True,) if e == n else (True, False)):
                    c = cost + float(reach[r]) * costs.segment(j, e, live)
                    key = (e, e if live else r)
                    if key not in best or c < best[key][0] - 1e-15:
                        best[key] = (c, [*segs, Segment(j, e, live)])
    if (n, n) not in best:
        raise NanotrtError("no plan fits the memory budget: one layer with its ramp does not fit; raise --memory-budget")
    return best[(n, n)]


def brute_force_plan(costs: Costs, reach: np.ndarray, fits: Callable[[int, int], bool]) -> tuple[float, list[Segment]]:
    """Every cut set and live-ramp choice (exponential; the reference the tests hold the DP to)."""
    n = costs.n
    best: tuple[float, list[Segment]] = (float("inf"), [])
    for cuts in itertools.product((0, 1, 2), repeat=n - 1):  # after layer i: no cut, cut, cut with a live ramp
        segs, start = [], 0
        for i, c in enumerate([*cuts, 2]):
            if c:
                segs.append(Segment(start, i + 1, c == 2))
                start = i + 1
        if all(fits(s.start, s.end) for s in segs):
            c = expected_cost(costs, segs, reach)
            if c < best[0] - 1e-15:
                best = (c, segs)
    return best


def reach_of(exit_layers: np.ndarray, n: int) -> np.ndarray:
    """reach[j] = share of rows still running after layer j (exit layer > j), j = 0..n."""
    return np.array([(exit_layers > j).mean() for j in range(n + 1)], dtype=np.float64)


def replay_cost(costs: Costs, segments: list[Segment], exit_layers: np.ndarray) -> float:
    """Exact mean seconds per example when each row stops at ``exit_layers`` (1-based, at a live ramp)."""
    ends = np.array([s.end for s in segments])
    cum = np.cumsum([costs.segment(s.start, s.end, s.ramp) for s in segments])
    return float(cum[np.searchsorted(ends, exit_layers)].mean())
