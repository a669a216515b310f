"""TensorRT backend: building plans (Polygraphy loaders) and running them in one shared scratch buffer.

Supported: TensorRT 10.1 to 11.x (``SUPPORTED``; 10.1 added the device-memory V2 API the swap runtime
needs, and 11 removed weak typing). One code path for both: every network is **strongly typed**, so the
precision comes from the ONNX fed to the parser (FP32 graph, FP16 graph with FP32 I/O, Q/DQ INT8 graph)
and no FP16/INT8 builder flag or calibrator is ever set. TF32 is off (Polygraphy's default), so an FP32
plan computes in FP32 like the ONNX Runtime reference.

Running, the low-VRAM pattern: engines are deserialized one at a time as the runner asks (on the prefetch
thread too); every execution context runs in one shared scratch buffer allocated once, when the runner
reserves the artifact's working set, at the size recorded in the manifest at build time (the largest
plan's ``device_memory_size_v2``), so no load ever re-points a context another thread may be running.
Inputs and outputs go through device buffers and pinned host staging buffers sized for the profile's
maximum shapes, reserved at the same time. Scratch and I/O buffers are counted in the memory budget.
Engines execute one at a time (a run lock), synchronously, on one stream; any thread may run them.

CUDA calls use cuda-python (``cuda.bindings.runtime``): plain bindings, no implicit context, works on
Jetson. The runtime needs only ``tensorrt.Runtime`` (the full package, ``tensorrt_lean`` or
``tensorrt_dispatch``); building needs ``tensorrt.Builder`` and Polygraphy.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU run `pip install 'nanotrt[tensorrt]'` "
    "(x86-64, CUDA 12/13), or on a Jetson Orin use the TensorRT 10 Python bindings of JetPack 6.1+"
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


def require_builder() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NanotrtError(INSTALL_HINT) from e
    if not hasattr(trt, "Builder"):
        raise NanotrtError(INSTALL_HINT + " (building plans needs the full `tensorrt` package, not only "
                           "the lean runtime)")
    check_version(str(trt.__version__))
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as e:
            raise NanotrtError("cuda-python is not installed: pip install 'nanotrt[tensorrt]'") from e
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (err, *values); raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise NanotrtError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


# --------------------------------------------------------------------------------------------
# Build options: plain JSON (they are stored in the manifest as the variant's options)
# --------------------------------------------------------------------------------------------

Shape = tuple[int, int]  # (batch, seq)


def parse_shape(text: str) -> Shape:
    try:
        b, s = (int(x) for x in text.lower().split("x"))
    except ValueError as e:
        raise NanotrtError(f"cannot read shape '{text}': use BATCHxSEQ, e.g. 8x128") from e
    if b < 1 or s < 1:
        raise NanotrtError(f"shape '{text}' must be positive: use BATCHxSEQ, e.g. 8x128")
    return b, s


@dataclass(frozen=True)
class BuildOptions:
    """The one optimization profile (batch x seq, min / opt / max) and builder settings of a TRT variant.
    ``max_shape`` None = (32, the tokenizer's max_length): no input is ever longer, and the profile max
    sizes the scratch memory. ``opt_shape`` None = (1, 128) within the max."""

    min_shape: Shape = (1, 1)
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_mb: int = 1024
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    def resolve(self, max_length: int) -> BuildOptions:
        """Fill the defaults from the artifact and check the profile; one clear line if it is wrong."""
        mx = self.max_shape or (32, max_length)
        opt = self.opt_shape or (1, min(128, mx[1]))
        if not (all(a <= b for a, b in zip(self.min_shape, opt, strict=True))
                and all(a <= b for a, b in zip(opt, mx, strict=True))):
            raise NanotrtError(f"TensorRT profile needs min <= opt <= max per dimension, got min "
                               f"{self.min_shape}, opt {opt}, max {mx}")
        if mx[1] > max_length:
            raise NanotrtError(f"--max-shape sequence {mx[1]} exceeds the artifact's tokenizer max_length "
                               f"{max_length}: no input is longer, and the larger profile only grows the "
                               f"scratch memory; use --max-shape {mx[0]}x{max_length}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise NanotrtError("--exclude-lean-runtime needs --version-compatible (TensorRT rule)")
        return BuildOptions(tuple(self.min_shape), tuple(opt), tuple(mx), self.workspace_mb,  # type: ignore[arg-type]
                            self.version_compatible, self.exclude_lean_runtime)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BuildOptions:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("min_shape", "opt_shape", "max_shape"):
            if known.get(k) is not None:
                known[k] = tuple(int(x) for x in known[k])
        return cls(**known)


def _dims(sig: dict[str, Any], bs: Shape) -> tuple[int, ...]:
    """Concrete dims of an I/O signature: symbolic batch / seq dims from ``bs``, static dims kept."""
    return tuple(bs[i] if isinstance(d, str) and i < 2 else int(d) for i, d in enumerate(sig["shape"]))


def io_bytes(entry: dict[str, Any], max_shape: Shape) -> dict[str, int]:
    """Bytes of each input and output of a graph at the profile's maximum shape (I/O buffers: outputs
    keyed ``out:NAME`` because a graph's output may share its name with the next graph's input)."""
    out = {}
    for key, prefix in (("inputs", ""), ("outputs", "out:")):
        for sig in entry[key]:
            out[prefix + sig["name"]] = int(np.prod(_dims(sig, max_shape))) * np.dtype(sig["dtype"]).itemsize
    return out


# --------------------------------------------------------------------------------------------
# Building (Polygraphy loaders; needs the full TensorRT package and a GPU)
# --------------------------------------------------------------------------------------------

def build_plan(onnx_path: Path, plan_path: Path, inputs: list[dict[str, Any]], options: BuildOptions,
               timing_cache: Path) -> None:
    """Parse ``onnx_path`` as a strongly typed network and write its serialized engine to ``plan_path``.
    The precision is the ONNX's own (FP32 / FP16 / Q-DQ); the timing cache is shared by a whole build."""
    require_builder()
    import tensorrt as trt  # typed by the stubs; the version is checked above
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    assert options.max_shape is not None and options.opt_shape is not None, "resolve() the options first"
    profile = Profile()
    for sig in inputs:
        profile.add(sig["name"], *(_dims(sig, s) for s in (options.min_shape, options.opt_shape, options.max_shape)))
    config = CreateConfig(
        tf32=False,  # FP32 layers compute in FP32 (parity with the ONNX Runtime reference)
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20},
        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
        version_compatible=options.version_compatible or None,
        exclude_lean_runtime=options.exclude_lean_runtime or None,
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        serialized = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    except PolygraphyException as e:
        raise NanotrtError(f"TensorRT cannot build {onnx_path.name}: {str(e).splitlines()[0][:300]} "
                           "(the TensorRT log above has the details)") from e
    plan_path.write_bytes(bytes(serialized))


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
        self.cudart = _cudart()
        self.device = device
        self.verify = verify
        self.lean_runtime = lean_runtime or os.environ.get(LEAN_RUNTIME_ENV)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._local = threading.local()
        self._runtimes: list[Any] = []  # every IRuntime stays alive as long as engines it made may
        self._lock = threading.Lock()  # live contexts, runtimes, the scratch pointer
        self._run_lock = threading.Lock()  # held while an engine executes: buffers change only between runs
        self._bind_thread()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.scratch = _Buffer()
        self.pool = _Pool()
        self.reserved_bytes = 0
        self.grown = 0  # scratch growths after the reservation (0 in the runner: the manifest sized it)
        self.live: list[TrtEngine] = []

    # --- threads and runtimes ----------------------------------------------------------------
    def _bind_thread(self) -> None:
        """The CUDA runtime's current device is per thread: the prefetch thread must select it too."""
        if getattr(self._local, "device", None) != self.device:
            _check(self.cudart.cudaSetDevice(self.device))
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
                if not self.lean_runtime:
                    raise NanotrtError(
                        "these plans were built with --exclude-lean-runtime: give the TensorRT lean runtime "
                        f"library (libnvinfer_lean.so of the TensorRT that built them) in ${LEAN_RUNTIME_ENV} "
                        "or TrtBackend(lean_runtime=PATH)")
                rt = rt.load_runtime(self.lean_runtime)
                if rt is None:
                    raise NanotrtError(f"TensorRT cannot load the lean runtime {self.lean_runtime}")
            if host_code:
                rt.engine_host_code_allowed = True
            with self._lock:
                self._runtimes.append(rt)
            cache[key] = rt
        return cache[key]

    # --- memory ---------------------------------------------------------------------------------
    def _alloc(self, nbytes: int, pinned_host: bool) -> int:
        c = self.cudart
        return int(_check(c.cudaMallocHost(nbytes) if pinned_host else c.cudaMalloc(nbytes)))

    def _free(self, ptr: int, pinned_host: bool) -> None:
        if ptr:
            _check(self.cudart.cudaFreeHost(ptr) if pinned_host else self.cudart.cudaFree(ptr))

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
            _check(cudart.cudaMemcpyAsync(dev.ptr, host.ptr, arr.nbytes, h2d, self.stream))
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
            _check(cudart.cudaMemcpyAsync(host.ptr, dev.ptr, nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
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
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        for e in list(self.live):
            self.release(e)
        self._free(self.scratch.ptr, False)
        for buf in self.pool.device.values():
            self._free(buf.ptr, False)
        for buf in self.pool.host.values():
            self._free(buf.ptr, True)
        _check(self.cudart.cudaStreamDestroy(self.stream))
        self.scratch, self.pool, self.stream, self.reserved_bytes = _Buffer(), _Pool(), None, 0
        self._runtimes.clear()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_info(plan_path: Path, options: BuildOptions) -> dict[str, Any]:
    """What the runtime must know about a plan before loading it: its scratch requirement (the engine's
    device_memory_size_v2 covers every profile shape up to the max). Read right after the build."""
    with TrtBackend(verify=False) as be:
        eng = be.open_plan(plan_path.read_bytes(), plan_path.stem, plan_path.stat().st_size,
                           version_compatible=options.version_compatible, lean=options.exclude_lean_runtime)
        return {"scratch_bytes": eng.scratch_bytes}


def plan_error(plan_path: Path, ref_onnx: Path, batches: list[dict[str, np.ndarray]], options: BuildOptions,
               limit: int = 8) -> float:
    """Max over calibration batches of ||plan - ref|| / ||ref|| (first output), the reference being the
    FP32 ONNX graph on ONNX Runtime CPU: the same measure the ORT INT8 path uses for its fallback."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    ref = ort.InferenceSession(str(ref_onnx), session_options(ort), providers=["CPUExecutionProvider"])
    names = [i.name for i in ref.get_inputs()]
    worst = 0.0
    step = max(1, len(batches) // limit)  # calibration batches are length-sorted: sample across lengths
    with TrtBackend(verify=False) as be:
        eng = be.open_plan(plan_path.read_bytes(), plan_path.stem, plan_path.stat().st_size,
                           version_compatible=options.version_compatible, lean=options.exclude_lean_runtime)
        out = eng.outputs[0]
        for b in batches[::step][:limit]:
            r = ref.run(None, {k: b[k] for k in names})[0].astype(np.float64)
            t = be.run(eng, b)[out].astype(np.float64)
            worst = max(worst, float(np.linalg.norm(t - r)) / max(float(np.linalg.norm(r)), 1e-12))
    return worst
