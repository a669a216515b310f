"""The residency cache: which engines are loaded, under a byte budget, with one prefetch thread.

The runner walks graphs in a known cyclic order (embeddings, layer 0, ramp 0, layer 1, ... then the next
batch). Eviction follows Belady: drop the resident graph whose next use is farthest ahead in that order
(for a cyclic scan larger than the cache this keeps a stable prefix resident, where LRU would miss on
every access). A prefetch only evicts graphs needed later than the one it loads.

The budget covers engines AND the activations the runner holds: the runner reserves its block's activation
bytes (``reserve_activations``) before walking it, and engines get what is left.

Invariants: bytes of resident + in-flight engines + reserved activations never exceed the budget; a graph in
use is never released; a graph being prefetched is never run before its load finished (callers wait on its
future).

Locking: one lock guards the slots and the stats. Loads and releases (milliseconds: a session build, a
session teardown) run outside it, so the prefetch thread finishing a load never waits for the runner's load
and the other way round. Only the runner's thread admits work (acquire, prefetch, reserve_activations): it
evicts under the lock (the bytes leave the accounting), releases the victims outside it, then loads, so
the memory held never runs ahead of the accounting.

Fork: a child made by ``fork()`` has no prefetch thread; every live cache gets a new lock and executor
there (``os.register_at_fork``), and loads that were in flight in the parent are forgotten.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend, trim_heap
from nanotrt.runtime.errors import NanotrtError


@dataclass
class CacheStats:
    loads: int = 0
    releases: int = 0
    bytes_loaded: int = 0
    load_s: float = 0.0  # time spent loading, foreground and background
    wait_s: float = 0.0  # time the runner was blocked on loads (what prefetch hides)
    peak_resident_bytes: int = 0  # engines
    peak_activation_bytes: int = 0  # activations reserved by the runner
    peak_total_bytes: int = 0  # engines + activations at the same moment: what the budget bounds
    prefetches: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Slot:
    nbytes: int
    engine: Any = None
    future: Future[Any] | None = None
    in_use: int = 0


class ResidencyCache:
    def __init__(self, backend: Backend, manifest: Manifest, order: list[str], budget: int | None,
                 prefetch: bool = True):
        self.backend, self.manifest = backend, manifest
        self.sizes = {n: int(manifest.graphs[n]["bytes"]) for n in order}
        self.budget = budget  # None: unlimited
        self.order = order
        self.positions: dict[str, list[int]] = {}
        for i, n in enumerate(order):
            self.positions.setdefault(n, []).append(i)
        self.length = len(order)
        self.cursor = 0
        self.slots: dict[str, _Slot] = {}
        self.activation_bytes = 0
        self.stats = CacheStats()
        # The runner refuses a budget below its largest graph with the minimum in the message.
        assert budget is None or budget >= max(self.sizes.values()), "budget below the largest graph"
        self._lock = threading.Lock()
        self._pool = _executor() if prefetch else None
        _LIVE.add(self)

    def _after_fork(self) -> None:
        """In a fork()ed child: the parent's prefetch thread and whoever held the lock do not exist here."""
        self._lock = threading.Lock()
        for name in [n for n, s in self.slots.items() if s.engine is None]:  # loading in the parent: never lands
            del self.slots[name]
        for slot in self.slots.values():
            slot.in_use, slot.future = 0, None
        self.activation_bytes = 0
        if self._pool is not None:
            self._pool = _executor()

    # --- accounting ------------------------------------------------------------------------
    @property
    def resident_bytes(self) -> int:
        return sum(s.nbytes for s in self.slots.values())

    def _note_peaks(self) -> None:
        st, engines = self.stats, self.resident_bytes
        st.peak_resident_bytes = max(st.peak_resident_bytes, engines)
        st.peak_activation_bytes = max(st.peak_activation_bytes, self.activation_bytes)
        st.peak_total_bytes = max(st.peak_total_bytes, engines + self.activation_bytes)

    def _distance(self, name: str) -> int:
        """Steps from the cursor to the next use of ``name`` in the cyclic walk."""
        return min((p - self.cursor) % self.length for p in self.positions[name])

    def _make_room(self, need: int, horizon: int | None) -> list[Any] | None:
        """Evict idle engines (farthest next use first) until ``need`` bytes fit. With ``horizon``, only
        engines used later than it may go. Called with the lock held; returns the evicted engines, which the
        caller releases (``_release``) after dropping the lock, or None when the room cannot be made."""
        if self.budget is None:
            return []
        idle = [n for n, s in self.slots.items() if s.in_use == 0 and s.future is None]
        idle.sort(key=self._distance, reverse=True)
        free = self.budget - self.activation_bytes - self.resident_bytes
        victims = []
        for n in idle:
            if free >= need:
                break
            if horizon is not None and self._distance(n) <= horizon:
                break
            victims.append(n)
            free += self.slots[n].nbytes
        if free < need:
            return None
        self.stats.releases += len(victims)
        return [self.slots.pop(n).engine for n in victims]

    def _release(self, engines: list[Any]) -> None:
        for engine in engines:  # outside the lock
            self.backend.release(engine)

    def _load(self, name: str) -> Any:
        """Load outside the lock (runner thread or prefetch thread); the stats under it."""
        t = time.perf_counter()
        engine = self.backend.load(self.manifest, name)
        with self._lock:
            self.stats.load_s += time.perf_counter() - t
            self.stats.loads += 1
            self.stats.bytes_loaded += self.sizes[name]
        return engine

    # --- API for the runner ----------------------------------------------------------------
    def acquire(self, pos: int) -> Any:
        """Return the engine at step ``pos`` of the walk, loading it (or waiting for its prefetch);
        marks it in use until ``release``."""
        name = self.order[pos]
        self.cursor = pos
        t = time.perf_counter()
        victims: list[Any] | None = None
        while True:
            with self._lock:
                slot = self.slots.get(name)
                if slot is None:
                    victims = self._make_room(self.sizes[name], None)
                    if victims is not None:  # room made: the slot is ours, loaded below outside the lock
                        slot = self.slots[name] = _Slot(self.sizes[name])
                        self._note_peaks()
                if slot is not None:  # resident, being prefetched, or ours to load
                    slot.in_use += 1
                    future = slot.future
                    break
                pending = [s.future for s in self.slots.values() if s.future is not None]
            if not pending:
                raise NanotrtError("memory budget exhausted by engines in use: raise --memory-budget")
            wait(pending)  # a prefetch holds the room; once loaded it can be evicted
        try:
            if victims is not None:
                self._release(victims)  # before the load: memory held stays within the accounting
                engine = self._load(name)
                with self._lock:
                    slot.engine = engine
            elif future is not None:
                future.result()
        except BaseException:
            with self._lock:
                self.slots.pop(name, None)
            raise
        finally:
            self._add_wait(time.perf_counter() - t)
        return slot.engine

    def _add_wait(self, seconds: float) -> None:
        with self._lock:
            self.stats.wait_s += seconds

    def release(self, pos: int) -> None:
        """The runner is done with step ``pos`` for now; the engine stays resident until room is needed."""
        name = self.order[pos]
        with self._lock:
            slot = self.slots.get(name)
            if slot is not None and slot.in_use > 0:
                slot.in_use -= 1

    def reserve_activations(self, nbytes: int) -> None:
        """Set the activation bytes the runner holds from now on, evicting idle engines (farthest next use
        first, after in-flight prefetches land) so that engines + activations fit the budget."""
        while True:
            with self._lock:
                if self.budget is None or nbytes + self.resident_bytes <= self.budget:
                    self.activation_bytes = nbytes
                    self._note_peaks()
                    return
                old, self.activation_bytes = self.activation_bytes, nbytes
                victims = self._make_room(0, None)
                if victims is not None:
                    self._note_peaks()
                else:
                    self.activation_bytes = old
                    pending = [s.future for s in self.slots.values() if s.future is not None]
            if victims is not None:
                self._release(victims)
                return
            if not pending:
                raise NanotrtError(f"memory budget {fmt_bytes(self.budget)} cannot hold {fmt_bytes(nbytes)} of "
                                   "activations next to the engines in use: raise --memory-budget or lower the batch size")
            wait(pending)

    def prefetch(self, pos: int) -> None:
        """Start loading the engine of step ``pos`` in the background if the budget allows without
        evicting anything that is needed sooner. Never blocks."""
        if self._pool is None:
            return
        name = self.order[pos % self.length]
        if not self.backend.prefetch_pays(self.manifest, name):
            return
        with self._lock:
            if name in self.slots:
                return
            victims = self._make_room(self.sizes[name], horizon=self._distance(name))
            if victims is None:
                return
            slot = self.slots[name] = _Slot(self.sizes[name])
            self._note_peaks()
            self.stats.prefetches += 1
        try:
            self._release(victims)  # before the load starts: memory held stays within the accounting
        except BaseException:
            with self._lock:
                self.slots.pop(name, None)
            raise
        with self._lock:  # the job's own bookkeeping waits for this lock: the future is set first
            slot.future = self._pool.submit(self._prefetch_job, name, slot)

    def _prefetch_job(self, name: str, slot: _Slot) -> None:
        try:
            slot.engine = self._load(name)
        finally:
            with self._lock:
                slot.future = None if slot.engine is not None else slot.future
                if slot.engine is None:  # failed: give the bytes back; acquire re-raises from the future
                    self.slots.pop(name, None)

    def clear(self) -> None:
        """Release every engine (waiting for in-flight prefetches first; a failed one was already reported
        to whoever acquired it, and its job removed its slot). A load cancelled by ``close`` never starts:
        its future is never notified, so it is not waited for."""
        wait([s.future for s in list(self.slots.values()) if s.future is not None and not s.future.cancelled()])
        with self._lock:
            engines = [s.engine for s in self.slots.values() if s.engine is not None]
            self.stats.releases += len(engines)
            self.slots.clear()
        self._release(engines)
        trim_heap()  # give the memory back to the OS now that nothing is resident

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.clear()


_LIVE: weakref.WeakSet[ResidencyCache] = weakref.WeakSet()


def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanotrt-prefetch")


def _reinit_after_fork() -> None:
    # Without this a child's first prefetch hangs: the executor believes its (parent's) worker is idle and
    # starts no thread, so the queued load never runs.
    for cache in list(_LIVE):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def parse_size(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS | {"": 1}:
        raise NanotrtError(f"cannot read memory size '{text}': use e.g. 300MB, 2GB, 512MiB, 3layers or all")
    return int(float(m.group(1)) * _UNITS.get(m.group(2).lower(), 1))
