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

import mmap
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.output_names, {k: feeds[k] for k in self.input_names}))

    def drop(self) -> None:
        self.session = None


@dataclass
class SwapEngine(OrtEngine):
    """A graph of a swap variant (``nanotrt build --swap``): its structure's shared session plus its mapped
    weight file, bound once as inputs by address (an IOBinding per engine: feeding 20-50 weight arrays through
    ``run`` costs more than a small layer's compute). Loading maps the file; releasing unmaps it."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    mapping: Any = None  # the mmap.mmap the views point into
    binding: Any = None  # onnxruntime IOBinding: weights bound at load, activations per run

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        io = self.binding
        held = [np.ascontiguousarray(feeds[k]) for k in self.input_names]  # alive until the run returns
        for k, a in zip(self.input_names, held, strict=True):
            io.bind_cpu_input(k, a)
        io.clear_binding_outputs()  # else ORT reuses the last run's output buffers, whose shape may not fit
        for o in self.output_names:
            io.bind_output(o, "cpu")
        self.session.run_with_iobinding(io)
        return list(io.copy_outputs_to_cpu())

    def drop(self) -> None:
        if self.binding is not None:
            self.binding.clear_binding_inputs()
            self.binding.clear_binding_outputs()
        self.session, self.weights, self.binding = None, {}, None
        mm, self.mapping = self.mapping, None
        if mm is not None:
            unmap(mm)


@dataclass(frozen=True)
class Layout:
    """Where a structure's weights lie in each of its graphs' files (the same for all of them): the exact .npy
    header np.save writes for the flat uint8 array, then each tensor at its offset."""

    header: bytes
    nbytes: int
    tensors: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Layout:
        import io

        nbytes = int(entry["weight_bytes"])
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)})
        return cls(buf.getvalue(), nbytes, tuple((str(n), np.dtype(d), tuple(int(x) for x in s), int(o))
                                                 for n, d, s, o in entry["weights"]))


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
                 spin: bool = False, prepack: bool | None = None, thread_pool: str | None = None,
                 populate: bool = False):
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
        # Swap variants: one session per structure, built once and kept (see load_swap). ``populate`` maps a
        # graph's weight pages when it is loaded, on the prefetch thread, rather than faulting them in its run:
        # off by default, it was slower on 2 shared cores (streaming_memory.md, populate=True rows); it is for a
        # cold page cache and spare cores, the disk read then happening while the current layer runs.
        self.populate = populate
        self._structures: dict[str, tuple[Any, Layout]] = {}
        self._structure_lock = threading.Lock()

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
        loader = _LOADERS.get(str(entry.get("format")))
        if loader is None:
            raise NanotrtError(f"graph {name} is a {entry.get('format')} file; the onnxruntime backend runs onnx graphs")
        return loader(self, manifest, name)

    def load_session(self, manifest: Manifest, name: str) -> OrtEngine:
        """A built or exported graph: one session per load (the weights come with it)."""
        entry = manifest.graphs[name]
        path = manifest.verify(name) if self.verify else manifest.path(name)
        sess = self._session(path, entry)
        return OrtEngine(name, sess, [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()],
                         int(entry["bytes"]))

    def _session(self, path: Path, entry: dict[str, Any]) -> Any:
        try:
            sess = self._ort.InferenceSession(str(path), self._options(entry), providers=self.providers)
        except Exception as e:  # noqa: BLE001 - corrupted graph -> one clear line
            raise NanotrtError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from e
        self.sessions_created += 1
        return sess

    def run(self, engine: OrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(engine.output_names, engine.run(feeds), strict=True))

    def release(self, engine: OrtEngine) -> None:
        # No heap trim per swap: the next engine reuses the freed blocks (RSS stays bounded by the budget),
        # and trimming then re-faulting the pages costs time (ort_load_options.md, 2-layer budget).
        # The cache trims when it is cleared. A swap engine unmaps its weights.
        engine.drop()

    # --- swap variants (issue 21): shared structure sessions, weights mapped per graph ----------------
    def load_swap(self, manifest: Manifest, name: str) -> OrtEngine:
        """Map the graph's weight file (sha256-checked on first use and whenever the file changed, like every
        graph) and bind views of it to its structure's session: no graph to parse, no weights copied."""
        entry = manifest.graphs[name]
        if self.prepack and entry.get("source") in manifest.graphs:
            # Nothing is swapped (configure): the built graph it was made from, with ORT's prepacked weights,
            # runs faster than weights fed as inputs (benchmarks/results/swap_cost.md, steady run vs resident).
            engine = self.load_session(manifest, str(entry["source"]))
            engine.name, engine.nbytes = name, int(entry["bytes"])
            return engine
        sess, layout = self.structure(manifest, str(entry["structure"]))
        path = manifest.verify(name) if self.verify else manifest.path(name)
        mm = open_weights(path, layout, self.populate)
        probe = np.frombuffer(mm, np.uint8, count=1)
        base = int(probe.__array_interface__["data"][0]) + len(layout.header)
        del probe  # no view may outlive the engine: drop() unmaps
        io = sess.io_binding()
        # Raw addresses into the mapping: binding 20-50 arrays as OrtValues cost more than the rest of a swap.
        # The binding is cleared before the mapping is closed (SwapEngine.drop).
        for k, dt, shape, off in layout.tensors:
            io.bind_input(k, "cpu", 0, dt.type, list(shape), base + off)
        outs = [o.name for o in sess.get_outputs()]
        acts = [i["name"] for i in entry["inputs"]]
        return SwapEngine(name, sess, acts, outs, int(entry["bytes"]), {}, mm, io)

    def structure(self, manifest: Manifest, sname: str) -> tuple[Any, Layout]:
        """The session of a structure graph and its weight layout, made on first use and kept until ``close``."""
        entry = manifest.graphs[sname]
        key = f"{manifest.root}:{sname}:{entry['sha256']}"
        with self._structure_lock:
            got = self._structures.get(key)
            if got is None:
                path = manifest.verify(sname) if self.verify else manifest.path(sname)
                got = self._structures[key] = (self._session(path, entry), Layout.of(entry))
        return got

    def prefetch_pays(self, manifest: Manifest, name: str) -> bool:
        """A swap graph maps in a fraction of a millisecond and its run faults the pages in: a background load
        costs more than it hides (thread hand-off, loads past an early exit; streaming_memory.md, prefetch=False
        rows). With ``populate`` the prefetch thread maps every page, which pays where the page cache is cold."""
        entry = manifest.graphs[name]
        return self.populate or self.prepack or entry.get("format") != SWAP_FORMAT

    def reserve(self, manifest: Manifest, names: list[str]) -> int:
        """Build the structure sessions of swap graphs now; their graphs' bytes are the budget's fixed part
        (the weights they run with are budgeted per graph while mapped)."""
        wanted = dict.fromkeys(str(manifest.graphs[n]["structure"]) for n in names
                               if manifest.graphs[n].get("format") == SWAP_FORMAT)
        for s in wanted:
            self.structure(manifest, s)
        return sum(int(manifest.graphs[s]["bytes"]) for s in wanted)

    def close(self) -> None:
        with self._structure_lock:
            self._structures.clear()


SWAP_FORMAT = "onnx-swap"  # manifest format of a swap variant's graph (pipeline/swap_build.py writes it)
_LOADERS = {"onnx": OrtBackend.load_session, SWAP_FORMAT: OrtBackend.load_swap}


def open_weights(path: Path, layout: Layout, populate: bool) -> mmap.mmap:
    """Map a swap weight file read-only. It must be the flat uint8 .npy the layout describes (its header is
    compared byte for byte: no pickle, nothing read out of range). ``populate`` (Linux): the kernel maps every
    page now (MAP_POPULATE), so the graph's run takes no page faults; otherwise the run faults them in from the
    page cache (minor faults, several pages each), or from disk when the file is not cached."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(layout.header))
            size = os.fstat(f.fileno()).st_size
            if head != layout.header or size != len(head) + layout.nbytes:
                raise ValueError(f"not the flat array of {layout.nbytes} bytes its structure describes")
            if populate and hasattr(mmap, "MAP_POPULATE"):
                return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise NanotrtError(f"cannot map weight file {path} ({e}): re-run `nanotrt build --swap`") from None


def map_weights(path: Path, layout: Layout, populate: bool) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
    """The mapping and one zero-copy array per tensor of ``layout`` (see ``open_weights``)."""
    mm = open_weights(path, layout, populate)
    start = len(layout.header)
    return mm, {name: np.ndarray(shape, dt, buffer=mm, offset=start + off) for name, dt, shape, off in layout.tensors}


def unmap(mm: mmap.mmap) -> None:
    """Give a mapping's pages back: munmap (they stay in the page cache, which the kernel reclaims as it
    needs). If a view of it is still referenced somewhere, drop its pages now and let the view unmap it."""
    try:
        mm.close()
    except BufferError:
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)
