"""TensorRT backend: loading plans and running them in one shared scratch buffer. Building plans is offline
work (pipeline/trt_build.py).

Supported: TensorRT 10.1 to 11.x (``SUPPORTED``; 10.1 added the device-memory V2 API the swap runtime
needs, and 11 removed weak typing), with cuda-python bindings of the CUDA major the driver supports
(``check_cuda``). Plans are strongly typed: the precision is the graph's own.

Running, the low-VRAM pattern: engines are deserialized one at a time as the runner asks (on the prefetch
thread too); every execution context runs in one shared scratch buffer allocated once, when the runner
reserves the artifact's working set, at the size recorded in the manifest at build time (the largest
plan's ``device_memory_size_v2``), so no load ever re-points a context another thread may be running.
Inputs and outputs go through device buffers and pinned host staging buffers sized for the profile's
maximum shapes, reserved at the same time. Scratch and I/O buffers are counted in the memory budget.
Engines execute one at a time (a run lock), synchronously, on one non-blocking stream (so that it does not
serialize with the legacy default stream, which a deserialization on the prefetch thread may use); any
thread may run them.

CUDA calls use cuda-python (``cuda.bindings.runtime``): plain bindings, no implicit context, works on
Jetson. The runtime needs only ``tensorrt.Runtime`` (the full package, ``tensorrt_lean`` or
``tensorrt_dispatch``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend
from nanotrt.runtime.errors import NanotrtError

if TYPE_CHECKING:  # mypy checks every TensorRT call below against tensorrt-stubs (10.13; see README)
    import tensorrt as trt

MIN_VERSION = (10, 1)  # device_memory_size_v2, set_device_memory(ptr, size)
MAX_MAJOR = 11  # newest major this code was written against (11 = strongly typed only)
SUPPORTED = "TensorRT >= 10.1, < 12 (x86-64 CUDA 12/13; Jetson Orin with JetPack 6.1+)"
LEAN_RUNTIME_ENV = "NANOTRT_TRT_LEAN_RUNTIME"  # libnvinfer_lean.so for --exclude-lean-runtime plans
# The extra whose cuda-python matches each CUDA major (pyproject.toml); JetPack 6 is CUDA 12.6.
CUDA_EXTRAS = {12: "pip install 'nanotrt[tensorrt-cu12]' (on a Jetson: 'nanotrt[jetson]')",
               13: "pip install 'nanotrt[tensorrt-cu13]'"}
INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU run `pip install 'nanotrt[tensorrt-cu12]'` "
    "(driver for CUDA 12) or `pip install 'nanotrt[tensorrt-cu13]'` (driver >= 580.65), or on a Jetson Orin "
    "use the TensorRT 10 Python bindings of JetPack 6.1+ with `pip install 'nanotrt[jetson]'`"
)


def parse_version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except ValueError as e:
        raise NanotrtError(f"cannot read the TensorRT version '{text}'") from e


def check_version(text: str) -> None:
    """One clear line when the installed TensorRT is outside the supported range."""
    v = parse_version(text)
    if v < MIN_VERSION:
        raise NanotrtError(f"TensorRT {text} is too old: nanotrt needs {SUPPORTED}; on a Jetson that means "
                           "JetPack 6.1 or newer (older Jetsons: use the onnxruntime backend)")
    if v[0] > MAX_MAJOR:
        raise NanotrtError(f"TensorRT {text} is newer than nanotrt supports ({SUPPORTED}): "
                           "install tensorrt<12 or a newer nanotrt")


def require_runtime() -> Any:
    """The TensorRT module that can deserialize and run plans: the full package, else the lean or
    dispatch runtime package (a deployment may ship only those; neither has a Builder)."""
    for name in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        if hasattr(mod, "Runtime"):  # not just the tensorrt-stubs folder
            check_version(str(mod.__version__))
            return mod
    raise NanotrtError(INSTALL_HINT)


def load_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as e:
            raise NanotrtError("cuda-python is not installed: pip install 'nanotrt[tensorrt-cu12]' "
                               "(or [tensorrt-cu13], [jetson])") from e
    return cudart


def cuda_check(result: Any) -> Any:
    """cuda-python returns (err, *values); raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise NanotrtError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def check_cuda(cudart: Any) -> None:
    """One clear line when the cuda-python bindings need a newer driver than this one: cuda-python 13 needs
    a CUDA 13 driver (>= 580.65), and with an older one every cudart call fails with 'insufficient driver'."""
    driver = int(cuda_check(cudart.cudaDriverGetVersion()))  # the newest CUDA the driver supports; 0 = none
    bindings = int(cuda_check(cudart.cudaRuntimeGetVersion()))  # the CUDA the bindings were made for
    if driver == 0:
        raise NanotrtError("no NVIDIA driver found: install the GPU driver, or use the onnxruntime backend")
    if bindings // 1000 > driver // 1000:
        fix = CUDA_EXTRAS.get(driver // 1000, f"pip install 'cuda-python<{driver // 1000 + 1}'")
        raise NanotrtError(
            f"cuda-python is built for CUDA {_cuda_version(bindings)} but this driver supports CUDA "
            f"{_cuda_version(driver)} at most: {fix} for the bindings of the driver's CUDA, or update the driver")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "BOOL": np.bool_, "UINT8": np.uint8}


def _np_dtype(trt_dtype: Any) -> np.dtype[Any]:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _NUMPY:
        raise NanotrtError(f"TensorRT I/O type {name} is not supported by nanotrt (FP32/FP16/INT I/O only)")
    return np.dtype(_NUMPY[name])


@dataclass
class TrtEngine:
    name: str
    engine: trt.ICudaEngine | None
    context: trt.IExecutionContext | None
    inputs: list[str]
    outputs: list[str]
    nbytes: int  # plan bytes (weights): what the residency cache counts per engine
    scratch_bytes: int  # this plan's device_memory_size_v2 (runs in the shared scratch)


@dataclass
class _Buffer:
    ptr: int = 0
    size: int = 0


@dataclass
class _Pool:
    """Device and pinned-host buffers keyed by tensor name (``out:NAME`` for outputs)."""

    device: dict[str, _Buffer] = field(default_factory=dict)
    host: dict[str, _Buffer] = field(default_factory=dict)


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, device: int = 0, verify: bool = True, lean_runtime: str | None = None):
        self.trt = require_runtime()
        self.cudart = load_cudart()
        check_cuda(self.cudart)
        self.device = device
        self.verify = verify
        self.lean_runtime = lean_runtime or os.environ.get(LEAN_RUNTIME_ENV)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._local = threading.local()
        self._runtimes: list[Any] = []  # every IRuntime stays alive as long as engines it made may
        self._lock = threading.Lock()  # live contexts, runtimes, the scratch pointer
        self._run_lock = threading.Lock()  # held while an engine executes: buffers change only between runs
        self._bind_thread()
        # Non-blocking: a blocking stream synchronizes with the legacy default stream, which loads on the
        # prefetch thread may use, so loads would wait for runs and runs for loads.
        self.stream = cuda_check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking))
        self.scratch = _Buffer()
        self.pool = _Pool()
        self.reserved_bytes = 0
        self.grown = 0  # scratch growths after the reservation (0 in the runner: the manifest sized it)
        self.live: list[TrtEngine] = []

    # --- threads and runtimes ----------------------------------------------------------------
    def _bind_thread(self) -> None:
        """The CUDA runtime's current device is per thread: the prefetch thread must select it too."""
        if getattr(self._local, "device", None) != self.device:
            cuda_check(self.cudart.cudaSetDevice(self.device))
            self._local.device = self.device

    def _runtime(self, lean: bool, host_code: bool) -> trt.Runtime:
        """One IRuntime per thread (deserializing is not documented thread-safe on a shared runtime);
        ``lean``: the lean runtime library that --exclude-lean-runtime plans need; ``host_code``: let
        version-compatible plans run the lean runtime they embed."""
        key = ("lean" if lean else "std", host_code)
        cache: dict[Any, Any] = self._local.__dict__.setdefault("runtimes", {})
        if key not in cache:
            rt: trt.Runtime = self.trt.Runtime(self.logger)
            if lean:
                parent = rt
                if not self.lean_runtime:
                    raise NanotrtError(
                        "these plans were built with --exclude-lean-runtime: give the TensorRT lean runtime "
                        f"library (libnvinfer_lean.so of the TensorRT that built them) in ${LEAN_RUNTIME_ENV} "
                        "or TrtBackend(lean_runtime=PATH)")
                rt = parent.load_runtime(self.lean_runtime)
                if rt is None:
                    raise NanotrtError(f"TensorRT cannot load the lean runtime {self.lean_runtime}")
                # The loaded runtime lives in a library the parent loaded; the API does not say the parent
                # may go first, and trtexec keeps it for as long as the engines: so do we.
                with self._lock:
                    self._runtimes.append(parent)
            if host_code:
                rt.engine_host_code_allowed = True
            with self._lock:
                self._runtimes.append(rt)
            cache[key] = rt
        return cache[key]

    # --- memory ---------------------------------------------------------------------------------
    def _alloc(self, nbytes: int, pinned_host: bool) -> int:
        c = self.cudart
        return int(cuda_check(c.cudaMallocHost(nbytes) if pinned_host else c.cudaMalloc(nbytes)))

    def _free(self, ptr: int, pinned_host: bool) -> None:
        if ptr:
            cuda_check(self.cudart.cudaFreeHost(ptr) if pinned_host else self.cudart.cudaFree(ptr))

    def _grow(self, buf: _Buffer, nbytes: int, pinned_host: bool = False) -> _Buffer:
        """I/O buffers: sized by ``reserve``; grown here only when a run needs more (no reservation, e.g.
        the build's error check). Called inside ``run`` (run lock held, copies synchronous), so nothing
        uses the old buffer when it is freed."""
        if buf.size < nbytes:
            ptr = self._alloc(nbytes, pinned_host)
            self._free(buf.ptr, pinned_host)
            buf.ptr, buf.size = ptr, nbytes
        return buf

    def _ensure_scratch(self, nbytes: int) -> None:
        """Called with the lock held. The scratch is sized once by ``reserve`` from the manifest, so in the
        runner it never grows. Should a plan need more (a plan opened without a reservation), it grows
        between runs, under the run lock: new buffer first, live contexts re-pointed, then the old one
        freed, so no execution ever sees freed memory, whichever thread loads."""
        if nbytes <= self.scratch.size:
            return
        with self._run_lock:
            ptr = self._alloc(nbytes, False)
            for e in self.live:
                assert e.context is not None
                e.context.set_device_memory(ptr, nbytes)
            self.grown += bool(self.scratch.ptr)
            self._free(self.scratch.ptr, False)
            self.scratch = _Buffer(ptr, nbytes)

    def reserve(self, manifest: Manifest, names: list[str]) -> int:
        """Allocate the working set of these plans now, on this (the runner's) thread: one scratch buffer
        of the largest recorded requirement, and device + pinned host I/O buffers at the profile's max
        shapes. Returns its bytes, which the runner counts in the memory budget."""
        entries = [manifest.graphs[n] for n in names]
        if any("scratch_bytes" not in e or "io_bytes" not in e for e in entries):
            raise NanotrtError(f"artifact '{manifest.root}' has TensorRT plans without recorded scratch and I/O "
                               "sizes: rebuild them with `nanotrt build --backend tensorrt`")
        self._bind_thread()
        with self._lock:
            self._ensure_scratch(max(int(e["scratch_bytes"]) for e in entries))
        io: dict[str, int] = {}
        for e in entries:
            for k, n in e["io_bytes"].items():
                io[k] = max(io.get(k, 0), int(n))
        for k, n in io.items():
            self._grow(self.pool.device.setdefault(k, _Buffer()), n)
            self._grow(self.pool.host.setdefault(k, _Buffer()), n, pinned_host=True)
        self.reserved_bytes = self.scratch.size + 2 * sum(io.values())
        return self.reserved_bytes

    def _host_view(self, buf: _Buffer, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) * dtype.itemsize
        raw = memoryview((ctypes.c_byte * count).from_address(buf.ptr)).cast("B")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    # --- Backend API ---------------------------------------------------------------------------
    def load(self, manifest: Manifest, name: str) -> TrtEngine:
        entry = manifest.graphs[name]
        if entry.get("format") != "trt-plan":
            raise NanotrtError(f"graph {name} is {entry.get('format')}; the tensorrt backend runs plans "
                               "from `nanotrt build --backend tensorrt`")
        path = manifest.verify(name) if self.verify else manifest.path(name)
        opts = manifest.data["variants"].get(entry.get("variant", ""), {}).get("options", {})
        return self.open_plan(path.read_bytes(), name, int(entry["bytes"]),
                              version_compatible=bool(opts.get("version_compatible")),
                              lean=bool(opts.get("exclude_lean_runtime")), built_with=opts.get("tensorrt"))

    def open_plan(self, plan: bytes, name: str, nbytes: int, version_compatible: bool = False,
                  lean: bool = False, built_with: str | None = None) -> TrtEngine:
        """Deserialize a plan and give it an execution context that runs in the shared scratch.
        Safe on the prefetch thread: own device binding and runtime; a scratch growth (never in the
        runner, which reserved from the manifest) waits for the running engine."""
        trt_mod = self.trt  # tensorrt, tensorrt_lean or tensorrt_dispatch
        self._bind_thread()
        engine: trt.ICudaEngine | None = self._runtime(lean, version_compatible or lean).deserialize_cuda_engine(plan)
        if engine is None:
            built = f"built with TensorRT {built_with}" if built_with else "built elsewhere"
            raise NanotrtError(
                f"TensorRT {trt_mod.__version__} cannot deserialize {name} ({built}; plans are specific to the "
                "TensorRT version and GPU unless built with --version-compatible): rebuild with "
                "`nanotrt build --backend tensorrt` on this device")
        context = engine.create_execution_context(trt_mod.ExecutionContextAllocationStrategy.USER_MANAGED)
        need = int(engine.device_memory_size_v2)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt_mod.TensorIOMode
        eng = TrtEngine(name, engine, context, [n for n in names if engine.get_tensor_mode(n) == mode.INPUT],
                        [n for n in names if engine.get_tensor_mode(n) == mode.OUTPUT], nbytes, need)
        with self._lock:
            self._ensure_scratch(need)
            context.set_device_memory(self.scratch.ptr, self.scratch.size)
            self.live.append(eng)
        return eng

    def run(self, engine: TrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute synchronously on the backend's stream. One run at a time (one shared scratch)."""
        self._bind_thread()
        with self._run_lock:
            return self._execute(engine, feeds)

    def _execute(self, engine: TrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx, eng = self.cudart, engine.context, engine.engine
        assert ctx is not None and eng is not None, f"{engine.name} was released"
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in engine.inputs:
            arr = np.ascontiguousarray(feeds[n], dtype=_np_dtype(eng.get_tensor_dtype(n)))
            if not ctx.set_input_shape(n, arr.shape):
                raise NanotrtError(f"input {n} of {engine.name} has shape {arr.shape}, outside the plan's "
                                   "optimization profile: rebuild with a larger --max-shape")
            host = self._grow(self.pool.host.setdefault(n, _Buffer()), arr.nbytes, pinned_host=True)
            self._host_view(host, arr.dtype, arr.shape)[...] = arr
            dev = self._grow(self.pool.device.setdefault(n, _Buffer()), arr.nbytes)
            cuda_check(cudart.cudaMemcpyAsync(dev.ptr, host.ptr, arr.nbytes, h2d, self.stream))
            ctx.set_tensor_address(n, dev.ptr)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        for n in engine.outputs:
            dims = ctx.get_tensor_shape(n)
            shape, dtype = tuple(int(dims[i]) for i in range(len(dims))), _np_dtype(eng.get_tensor_dtype(n))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev = self._grow(self.pool.device.setdefault("out:" + n, _Buffer()), nbytes)
            self._grow(self.pool.host.setdefault("out:" + n, _Buffer()), nbytes, pinned_host=True)
            ctx.set_tensor_address(n, dev.ptr)
            shapes[n] = (shape, dtype)
        if not ctx.execute_async_v3(int(self.stream)):
            raise NanotrtError(f"TensorRT execution of {engine.name} failed (see the TensorRT log above)")
        for n, (shape, dtype) in shapes.items():
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev, host = self.pool.device["out:" + n], self.pool.host["out:" + n]
            cuda_check(cudart.cudaMemcpyAsync(host.ptr, dev.ptr, nbytes, d2h, self.stream))
        cuda_check(cudart.cudaStreamSynchronize(self.stream))
        return {n: self._host_view(self.pool.host["out:" + n], dtype, shape).copy()
                for n, (shape, dtype) in shapes.items()}

    def release(self, engine: TrtEngine) -> None:
        with self._lock:
            if engine in self.live:
                self.live.remove(engine)
        engine.context = None  # context before engine (TensorRT's destruction order)
        engine.engine = None

    def close(self) -> None:
        if self.stream is None:
            return
        cuda_check(self.cudart.cudaStreamSynchronize(self.stream))
        for e in list(self.live):
            self.release(e)
        self._free(self.scratch.ptr, False)
        for buf in self.pool.device.values():
            self._free(buf.ptr, False)
        for buf in self.pool.host.values():
            self._free(buf.ptr, True)
        cuda_check(self.cudart.cudaStreamDestroy(self.stream))
        self.scratch, self.pool, self.stream, self.reserved_bytes = _Buffer(), _Pool(), None, 0
        self._runtimes.clear()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
