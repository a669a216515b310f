"""ONNX Runtime backend (CPU here; CUDA/TensorRT execution providers where installed).

Threads: by default every session runs on ONE process-wide ORT thread pool (``threads`` intra-op threads,
created once, before the first session, by whichever runner comes first). Per-session pools cost most of the
per-layer split: 25 sessions each owning a pool fight for the same cores (benchmarks/results/ort_load_options.md).
``thread_pool="session"`` (or ``NANOTRT_ORT_THREAD_POOL=session``) restores one pool per session, ORT's
default. Once the global pool exists, ORT refuses every session of the process that does not opt in
(``SessionOptions.use_per_session_threads = False``). Inside nanotrt that is no trap: every session the
project makes (export and build checks, calibration, quantization error checks, bench rows) takes its options
from ``session_options``, and ORT's own tools that build sessions internally (``quantize_static``'s
calibrator, the transformer optimizer) run inside ``library_sessions()``. An application that also builds
its own ORT sessions should pass ``thread_pool="session"`` or take its options from ``session_options``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend, check_threads
from nanotrt.runtime.errors import NanotrtError


@dataclass
class OrtEngine:
    name: str
    session: Any
    input_names: list[str]
    output_names: list[str]
    nbytes: int


# The process-wide pool: ORT allows exactly one, created on the first call; later calls raise. None until
# a backend asked for it; then the intra-op size it was created with (0 = ORT's default, the physical cores),
# or False when it could not be created (old ORT, or the environment already existed without global pools).
_POOL_LOCK = threading.Lock()
_POOL: dict[str, Any] = {"threads": None, "created": None}


def shared_thread_pool(ort: Any, threads: int | None) -> bool:
    """Create ORT's global intra-op pool once per process (feature-detected). True when sessions may use it."""
    with _POOL_LOCK:
        if _POOL["created"] is None:
            setter = getattr(ort, "set_global_thread_pool_sizes", None)
            if setter is None:
                _POOL["created"] = False
            else:
                try:
                    setter(int(threads or 0), 1)  # inter-op: 1, the graphs run sequentially
                    _POOL["created"], _POOL["threads"] = True, threads
                except ort.capi.onnxruntime_pybind11_state.Fail:
                    # ORT's status FAIL is its one refusal here: the global pools exist already (made by
                    # the application). There is no query for it; the status code, not the text, tells.
                    _POOL["created"], _POOL["threads"] = True, "existing"
        elif _POOL["created"] and threads and _POOL["threads"] not in (threads, "existing"):
            warnings.warn(f"ORT's shared thread pool already has {_POOL['threads'] or 'default'} threads; "
                          f"threads={threads} is ignored (one pool per process)", stacklevel=3)
        return bool(_POOL["created"])


def session_options(ort: Any, threads: int | None = None) -> Any:
    """SessionOptions for a session nanotrt makes outside a backend (build checks, calibration, bench rows):
    on the process-wide pool once it exists (ORT refuses per-session pools then), else ``threads`` intra-op
    threads of its own (None: ORT's default). Quiet: warnings only."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if _POOL["created"]:
        so.use_per_session_threads = False
    elif threads:
        so.intra_op_num_threads = check_threads(threads)
    return so


_LIBRARY_LOCK = threading.Lock()
_LIBRARY_DEPTH = [0]


@contextmanager
def library_sessions() -> Iterator[None]:
    """Run ORT's own tools (``quantize_static``'s calibrator, the transformer optimizer, shape inference)
    on the process-wide pool: they build sessions from plain SessionOptions, which ORT refuses once the pool
    exists. Inside the block a session created without choosing is put on the pool; nothing changes when
    there is no pool. (ORT offers no hook for their options, hence the wrapper around its constructor.)"""
    import onnxruntime as ort

    cls = ort.InferenceSession
    with _LIBRARY_LOCK:
        _LIBRARY_DEPTH[0] += 1
        if _LIBRARY_DEPTH[0] == 1:
            real = cls.__init__

            def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
                if _POOL["created"]:
                    sess_options = sess_options or ort.SessionOptions()
                    sess_options.use_per_session_threads = False
                real(self, path_or_bytes, sess_options, *args, **kwargs)

            init.__wrapped__ = real  # type: ignore[attr-defined]
            cls.__init__ = init
    try:
        yield
    finally:
        with _LIBRARY_LOCK:
            _LIBRARY_DEPTH[0] -= 1
            if _LIBRARY_DEPTH[0] == 0:
                cls.__init__ = cls.__init__.__wrapped__


class OrtBackend(Backend):
    """``threads``: intra-op threads (default: ORT's choice, one per physical core). ``thread_pool``:
    ``shared`` (one process-wide pool, default) or ``session`` (one pool per session). ``spin``: let idle
    pool threads spin for the next op (default off: measured in ort_load_options.md; on a shared machine
    spinning threads steal the cores). ``prepack``: re-lay out GEMM weights at load (decided by the runner
    through ``configure`` unless given)."""

    name = "onnxruntime"

    def __init__(self, threads: int | None = None, providers: list[str] | None = None, verify: bool = True,
                 spin: bool = False, prepack: bool | None = None, thread_pool: str | None = None):
        import onnxruntime as ort

        check_threads(threads)
        thread_pool = thread_pool or os.environ.get("NANOTRT_ORT_THREAD_POOL", "shared")
        if thread_pool not in ("shared", "session"):
            raise NanotrtError(f"unknown thread_pool '{thread_pool}': use shared or session")
        if thread_pool == "session" and _POOL["created"]:
            raise NanotrtError("thread_pool='session' is not possible in this process any more: ORT's process-wide "
                               "pool exists (a runner with the default 'shared' made it) and ORT then refuses "
                               "per-session pools; use the shared pool, or choose 'session' before the first runner")
        self._ort = ort
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.verify = verify
        self.spin = spin
        self._prepack_fixed = prepack
        self.prepack = True if prepack is None else prepack
        self.shared_pool = thread_pool == "shared" and shared_thread_pool(ort, threads)
        self.sessions_created = 0  # counted so tests and benches can see what a streamed run builds

    def configure(self, swapping: bool) -> None:
        # Prepacking re-lays out GEMM weights at load into a second copy: most of a built BERT-base layer's
        # load time (benchmarks/results/ort_load_options.md) and memory the budget does not count. Only when
        # everything stays resident.
        if self._prepack_fixed is None:
            self.prepack = not swapping

    def _options(self, entry: dict[str, Any]) -> Any:
        so = self._ort.SessionOptions()
        # The CPU arena keeps freed blocks for reuse; a streaming runtime must give memory back.
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
        level = self._ort.GraphOptimizationLevel
        # Graphs optimized offline by `nanotrt build` load faster with nothing left to do.
        optimized = entry.get("ort_optimized") in self.providers
        so.graph_optimization_level = level.ORT_DISABLE_ALL if optimized else level.ORT_ENABLE_EXTENDED
        so.log_severity_level = 3
        if self.shared_pool:
            so.use_per_session_threads = False
            if not self.spin:  # the global pool spins by default; stop it as soon as a run returns
                so.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            if not self.spin:
                # Per-session pools: spinning idle threads of 25 sessions steal the cores from the one that runs.
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.threads:
                so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if not self.prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    def load(self, manifest: Manifest, name: str) -> OrtEngine:
        entry = manifest.graphs[name]
        if entry.get("format") != "onnx":
            raise NanotrtError(f"graph {name} is a {entry.get('format')} file; the onnxruntime backend runs onnx graphs")
        path = manifest.verify(name) if self.verify else manifest.path(name)
        try:
            sess = self._ort.InferenceSession(str(path), self._options(entry), providers=self.providers)
        except Exception as e:  # noqa: BLE001 - corrupted graph -> one clear line
            raise NanotrtError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from e
        self.sessions_created += 1
        return OrtEngine(name, sess, [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()],
                         int(entry["bytes"]))

    def run(self, engine: OrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = engine.session.run(engine.output_names, {k: feeds[k] for k in engine.input_names})
        return dict(zip(engine.output_names, outs, strict=True))

    def release(self, engine: OrtEngine) -> None:
        # No heap trim per swap: the next engine reuses the freed blocks (RSS stays bounded by the budget),
        # and trimming then re-faulting the pages costs time (ort_load_options.md, 2-layer budget).
        # The cache trims when it is cleared.
        engine.session = None
