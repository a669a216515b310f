"""Property-based checks of the residency cache's promises, through the real Runner walk, with a fake
backend (no ONNX Runtime: fast, and it can slow loads down and watch every engine):

- resident + in-flight engine bytes never exceed the budget;
- an engine is never released while it runs (a graph in use is never released);
- an engine is never run before its load finished (a prefetch in flight is waited for);
- results do not depend on the budget or on prefetching (same exits, same logits as all-resident).

Hypothesis draws the walk (texts, batch sizes, exit policy: where samples leave), the budget (from one
graph to everything), prefetch on/off and load latencies.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import TINY_ARTIFACT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend
from nanotrt.runtime.runner import Runner

WORDS = ["good", "bad", "film", "plot", "the", "a", "dull", "bright", "very", "not", "acting", "ending"]


@dataclass
class FakeEngine:
    name: str
    role: str
    nbytes: int
    ready: bool = False
    released: bool = False
    running: int = 0


class FakeBackend(Backend):
    """Engines are plain objects. Ramp logits are a deterministic function of (graph, hidden state), so a
    correct walk gives the same answers whatever the budget; layers perturb the hidden state."""

    name = "onnxruntime"  # stands in for the backend of the ONNX variants it walks (the registry checks who runs one)

    def __init__(self, budget: int | None, delays: list[float], labels: int) -> None:
        self.budget, self.delays, self.labels = budget, delays, labels
        self.lock = threading.Lock()
        self.held = 0  # bytes of engines loading or loaded and not yet released
        self.peak = 0
        self.loads = 0
        self.violations: list[str] = []

    def load(self, manifest: Manifest, name: str) -> FakeEngine:
        entry = manifest.graphs[name]
        e = FakeEngine(name, str(entry["role"]), int(entry["bytes"]))
        with self.lock:
            self.held += e.nbytes
            self.peak = max(self.peak, self.held)
            if self.budget is not None and self.held > self.budget:
                self.violations.append(f"{self.held} bytes held/loading > budget {self.budget} loading {name}")
            delay = self.delays[self.loads % len(self.delays)]
            self.loads += 1
        time.sleep(delay)  # a slow load: the runner must wait for it, not run a half-loaded engine
        e.ready = True
        return e

    def run(self, engine: FakeEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not engine.ready or engine.released:
            self.violations.append(f"ran {engine.name}: ready={engine.ready} released={engine.released}")
        engine.running += 1
        try:
            if engine.role == "embeddings":
                e = feeds["inputs_embeds"] if "inputs_embeds" in feeds else feeds["input_ids"][..., None]
                return {"hidden_states": np.ascontiguousarray(e[..., :8], dtype=np.float32)}
            h = feeds["hidden_states"]
            salt = zlib.crc32(engine.name.encode()) % 97
            if engine.role == "layer":
                return {"hidden_states_out": np.tanh(h * 1.3 + salt / 97).astype(np.float32)}
            pooled = h[:, 0, :].astype(np.float64)
            w = np.cos(np.arange(pooled.shape[1] * self.labels).reshape(pooled.shape[1], self.labels) + salt)
            return {"logits": (4 * pooled @ w).astype(np.float32)}
        finally:
            engine.running -= 1

    def release(self, engine: FakeEngine) -> None:
        if engine.running:
            self.violations.append(f"released {engine.name} while it runs")
        if engine.released:
            self.violations.append(f"released {engine.name} twice")
        engine.released = True
        with self.lock:
            self.held -= engine.nbytes


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load(TINY_ARTIFACT)  # committed: these tests run in the core install too


def _reference(manifest: Manifest, texts: list[str], exit: str) -> Any:
    with Runner(manifest, FakeBackend(None, [0.0], len(manifest.labels)), exit=exit, prefetch=False,
                variant="fp32") as r:
        return r.predict(texts, batch_size=len(texts))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join), min_size=1, max_size=9),
    batch_size=st.integers(1, 5),
    exit=st.sampled_from(["none", "patience=1", "patience=2", "entropy=0.4", "maxprob=0.7", "depth=2"]),
    budget_layers=st.integers(1, 10),  # room for 1 graph .. everything (4 layers: 9 graphs)
    prefetch=st.booleans(),
    delays=st.lists(st.sampled_from([0.0, 0.0, 0.0005, 0.002]), min_size=1, max_size=4),
    repeats=st.integers(1, 2),
)
def test_cache_promises_hold_on_random_walks(manifest: Manifest, texts: list[str], batch_size: int, exit: str,
                                            budget_layers: int, prefetch: bool, delays: list[float],
                                            repeats: int) -> None:
    backend = FakeBackend(None, delays, len(manifest.labels))
    # "Nlayers" rather than bytes: the runtime decides what a layer's room includes (activations too)
    with Runner(manifest, backend, memory_budget=f"{budget_layers}layers", exit=exit, prefetch=prefetch,
                variant="fp32") as r:
        budget = backend.budget = r.budget
        assert budget is not None
        results = [r.predict(texts, batch_size=batch_size) for _ in range(repeats)]  # repeats: cross-batch reuse
        assert r.cache.stats.peak_resident_bytes <= budget
    assert backend.violations == []
    assert backend.peak <= budget
    assert backend.held == 0, "every engine released on close"
    ref = _reference(manifest, texts, exit)
    for res in results:
        assert res.exit_layers.tolist() == ref.exit_layers.tolist()
        np.testing.assert_allclose(res.logits, ref.logits, rtol=1e-6, atol=1e-6)


def test_fake_backend_detects_violations(manifest: Manifest) -> None:
    """The checks above can fail: an engine run before its load finished or released while it runs is seen."""
    be = FakeBackend(10, [0.0], 2)
    e = FakeEngine("layer_00", "layer", 100)
    be.run(e, {"hidden_states": np.zeros((1, 2, 8), np.float32)})
    e.running = 1
    be.release(e)
    assert len(be.violations) == 2
    be.load(manifest, "layer_00")
    assert "budget" in be.violations[-1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(st.tuples(st.sampled_from(["acquire", "prefetch", "release"]), st.integers(0, 50)), max_size=60),
    budget_frac=st.floats(0.0, 1.0),
    delays=st.lists(st.sampled_from([0.0, 0.0005, 0.002]), min_size=1, max_size=3),
)
def test_cache_promises_hold_on_random_operation_sequences(manifest: Manifest, ops: list[tuple[str, int]],
                                                          budget_frac: float, delays: list[float]) -> None:
    """The cache API driven directly, several engines held at once (as a block-mode walk would): held
    engines are never evicted and always fully loaded; the budget holds; running out of room while
    everything is held is a clear error, never an overrun."""
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.residency import ResidencyCache

    sched = manifest.schedule("fp32")
    order = [sched.embeddings]
    for lay, ramp in zip(sched.layers, sched.ramps, strict=True):
        order += [lay, ramp]
    sizes = [int(manifest.graphs[n]["bytes"]) for n in order]
    budget = int(max(sizes) + budget_frac * (sum(sizes) - max(sizes)))
    backend = FakeBackend(budget, delays, 2)
    cache = ResidencyCache(backend, manifest, order, budget, prefetch=True)
    held: list[tuple[int, FakeEngine]] = []
    try:
        for op, k in ops:
            pos = k % len(order)
            if op == "acquire":
                try:
                    engine = cache.acquire(pos)
                except NanotrtError as e:
                    assert "in use" in str(e) and held  # only when held engines leave no room
                    continue
                assert engine.ready and not engine.released and engine.name == order[pos]
                held.append((pos, engine))
            elif op == "prefetch":
                cache.prefetch(pos)
            elif held:
                p, _ = held.pop(k % len(held))
                cache.release(p)
            assert cache.resident_bytes <= budget
            assert all(not e.released for _, e in held), "an engine in use was released"
    finally:
        for p, _ in held:
            cache.release(p)
        cache.close()
    assert backend.violations == []
    assert backend.peak <= budget and backend.held == 0
