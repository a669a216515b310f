"""TensorRT backend (TensorRT >= 10 Python API), imported lazily: building plans and running them.

Building: each ONNX graph -> one serialized ``.plan``; one optimization profile over batch and sequence
length; FP16; INT8 from explicit QDQ ONNX (the implicit IInt8 calibrators are deprecated since 10.1 and
removed in 11 -- a legacy calibration cache is offered only for TensorRT 8.x devices); a timing cache
shared by all graphs of an artifact; version-compatible / lean-runtime plans; a workspace limit.

Running, the low-VRAM pattern: engines are deserialized one at a time as the runner asks; every execution
context runs in one shared scratch buffer sized for the largest engine (user-managed device memory);
inputs and outputs go through pinned host staging buffers; each loaded engine has its own CUDA stream.
CUDA calls use cuda-python (``cuda.bindings.runtime``): pure bindings, no context magic, works on Jetson.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend
from nanotrt.runtime.errors import NanotrtError

INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU run `pip install -e '.[tensorrt]'` "
    "(x86-64 with CUDA 12/13), or on a Jetson use the TensorRT Python bindings that ship with JetPack 6"
)


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise NanotrtError(INSTALL_HINT) from None
    if not hasattr(trt, "Builder"):  # e.g. only the tensorrt-stubs folder, or the lean runtime
        raise NanotrtError(INSTALL_HINT)
    if int(trt.__version__.split(".")[0]) < 10:
        raise NanotrtError(f"TensorRT {trt.__version__} found; nanotrt builds with TensorRT >= 10 "
                           "(for TensorRT 8.x devices use --legacy-calib-cache with trtexec)")
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise NanotrtError("cuda-python is not installed: pip install -e '.[tensorrt]'") from None
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (err, *values); raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise NanotrtError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

@dataclass
class ProfileShapes:
    """min / opt / max of (batch, seq) for the one optimization profile of every graph."""

    min: tuple[int, int] = (1, 1)
    opt: tuple[int, int] = (1, 128)
    max: tuple[int, int] = (32, 512)


def _dims(sig: dict[str, Any], bs: tuple[int, int]) -> tuple[int, ...]:
    """Concrete dims for an input signature: dynamic 'batch'/'seq' from ``bs``, static dims kept."""
    out = []
    for i, d in enumerate(sig["shape"]):
        out.append(bs[i] if isinstance(d, str) and i < 2 else int(d))
    return tuple(out)


def build_plan(onnx_path: Path, plan_path: Path, precision: str, inputs: Sequence[dict[str, Any]], hidden_size: int,
               workdir: Path, *, profile: ProfileShapes | None = None, workspace_mb: int = 1024,
               timing_cache: Path | None = None, version_compatible: bool = False,
               exclude_lean_runtime: bool = False, legacy_calib_cache: Path | None = None,
               calib_batches: list[dict[str, np.ndarray]] | None = None) -> None:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path``."""
    require_tensorrt()
    import tensorrt as trt  # typed by tensorrt-stubs under mypy
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise NanotrtError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # non-quantized layers of an INT8 graph may use FP16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if exclude_lean_runtime:
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    shapes = profile or ProfileShapes()
    prof = builder.create_optimization_profile()
    for sig in inputs:
        prof.set_shape(sig["name"], *(trt.Dims(list(_dims(sig, bs))) for bs in (shapes.min, shapes.opt, shapes.max)))
    config.add_optimization_profile(prof)
    cache_file = timing_cache or workdir / "timing.cache"
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if legacy_calib_cache is not None:
        if calib_batches is None:
            raise NanotrtError("a legacy calibration cache needs calibration data (--calib-task)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_legacy_calibrator(calib_batches, legacy_calib_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NanotrtError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))


def make_legacy_calibrator(batches: list[dict[str, np.ndarray]], cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 that feeds the shared calibration batches and writes a calibration cache
    for TensorRT 8.x devices (e.g. JetPack 4 Jetson Nano; note Maxwell GPUs have no INT8 at all)."""
    import tensorrt as trt

    cudart = _cudart()

    class LegacyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.device: dict[str, tuple[int, int]] = {}

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0]) if batches else 1

        def get_batch(self, names: list[str]) -> list[int]:
            batch = next(self.batches, None)
            if batch is None:
                return []  # no data left
            ptrs = []
            for n in names:
                arr = np.ascontiguousarray(batch[n])
                ptr, size = self.device.get(n, (0, 0))
                if size < arr.nbytes:
                    if ptr:
                        _check(cudart.cudaFree(ptr))
                    ptr, size = int(_check(cudart.cudaMalloc(arr.nbytes))), arr.nbytes
                    self.device[n] = (ptr, size)
                _check(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                ptrs.append(ptr)
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return LegacyCalibrator()


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

@dataclass
class TrtEngine:
    name: str
    engine: Any
    context: Any
    stream: Any
    inputs: list[str]
    outputs: list[str]
    nbytes: int
    scratch: int = 0


@dataclass
class _Buffer:
    ptr: int = 0
    size: int = 0


@dataclass
class _Pool:
    """Grow-only device and pinned-host buffers keyed by tensor name (engines run one at a time)."""

    device: dict[str, _Buffer] = field(default_factory=dict)
    host: dict[str, _Buffer] = field(default_factory=dict)


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, device: int = 0, verify: bool = True):
        require_tensorrt()
        import tensorrt as trt

        self.cudart = _cudart()
        _check(self.cudart.cudaSetDevice(device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.verify = verify
        self.scratch = _Buffer()
        self.pool = _Pool()
        self.live: list[TrtEngine] = []

    def variant_for(self, precision: str) -> str:
        return f"trt-{precision}"

    # --- memory helpers ----------------------------------------------------------------------
    def _grow(self, buf: _Buffer, nbytes: int, pinned_host: bool = False) -> _Buffer:
        """Grow-only buffer: device memory, or pinned host memory for staging copies."""
        if buf.size < nbytes:
            c = self.cudart
            alloc, free = (c.cudaMallocHost, c.cudaFreeHost) if pinned_host else (c.cudaMalloc, c.cudaFree)
            if buf.ptr:
                _check(free(buf.ptr))
            buf.ptr, buf.size = int(_check(alloc(nbytes))), nbytes
        return buf

    def _host_view(self, buf: _Buffer, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) * dtype.itemsize
        raw = memoryview((ctypes.c_byte * count).from_address(buf.ptr)).cast("B")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _ensure_scratch(self, nbytes: int) -> None:
        """One scratch buffer for all contexts, sized for the largest engine loaded so far."""
        if nbytes <= self.scratch.size:
            return
        self._grow(self.scratch, nbytes)
        for e in self.live:  # re-point the contexts that used the old buffer
            e.context.set_device_memory(self.scratch.ptr, self.scratch.size)

    # --- Backend API ---------------------------------------------------------------------------
    def load(self, manifest: Manifest, name: str) -> TrtEngine:
        import tensorrt as trt

        entry = manifest.graphs[name]
        if entry.get("format") != "trt-plan":
            raise NanotrtError(f"graph {name} is {entry.get('format')}; the tensorrt backend runs plans "
                               "from `nanotrt build --backend tensorrt`")
        path = manifest.verify(name) if self.verify else manifest.path(name)
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise NanotrtError(f"TensorRT cannot deserialize {path} (built for another TensorRT version or GPU?): "
                               "rebuild with `nanotrt build --backend tensorrt` on this device")
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        scratch = int(engine.device_memory_size_v2)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        stream = _check(self.cudart.cudaStreamCreate())
        eng = TrtEngine(name, engine, context, stream, inputs, outputs, int(entry["bytes"]), scratch)
        self._ensure_scratch(scratch)
        context.set_device_memory(self.scratch.ptr, self.scratch.size)
        self.live.append(eng)
        return eng

    def run(self, engine: TrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt

        cudart, ctx = self.cudart, engine.context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in engine.inputs:
            dtype = np.dtype(trt.nptype(engine.engine.get_tensor_dtype(n)))
            arr = np.ascontiguousarray(feeds[n], dtype=dtype)
            if not ctx.set_input_shape(n, arr.shape):
                raise NanotrtError(f"input {n} shape {arr.shape} is outside the engine's optimization profile")
            host = self._grow(self.pool.host.setdefault(n, _Buffer()), arr.nbytes, pinned_host=True)
            self._host_view(host, dtype, arr.shape)[...] = arr
            dev = self._grow(self.pool.device.setdefault(n, _Buffer()), arr.nbytes)
            _check(cudart.cudaMemcpyAsync(dev.ptr, host.ptr, arr.nbytes, h2d, engine.stream))
            ctx.set_tensor_address(n, dev.ptr)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        for n in engine.outputs:
            shape = tuple(ctx.get_tensor_shape(n))
            dtype = np.dtype(trt.nptype(engine.engine.get_tensor_dtype(n)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev = self._grow(self.pool.device.setdefault("out:" + n, _Buffer()), nbytes)
            self._grow(self.pool.host.setdefault("out:" + n, _Buffer()), nbytes, pinned_host=True)
            ctx.set_tensor_address(n, dev.ptr)
            shapes[n] = (shape, dtype)
        if not ctx.execute_async_v3(engine.stream):
            raise NanotrtError(f"TensorRT execution of {engine.name} failed")
        out: dict[str, np.ndarray] = {}
        for n, (shape, dtype) in shapes.items():
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev, host = self.pool.device["out:" + n], self.pool.host["out:" + n]
            _check(cudart.cudaMemcpyAsync(host.ptr, dev.ptr, nbytes, d2h, engine.stream))
        _check(cudart.cudaStreamSynchronize(engine.stream))
        for n, (shape, dtype) in shapes.items():
            out[n] = self._host_view(self.pool.host["out:" + n], dtype, shape).copy()
        return out

    def release(self, engine: TrtEngine) -> None:
        if engine in self.live:
            self.live.remove(engine)
        _check(self.cudart.cudaStreamSynchronize(engine.stream))
        _check(self.cudart.cudaStreamDestroy(engine.stream))
        engine.context = None
        engine.engine = None

    def close(self) -> None:
        for e in list(self.live):
            self.release(e)
        for buf in [self.scratch, *self.pool.device.values()]:
            if buf.ptr:
                _check(self.cudart.cudaFree(buf.ptr))
        for buf in self.pool.host.values():
            if buf.ptr:
                _check(self.cudart.cudaFreeHost(buf.ptr))
        self.scratch, self.pool = _Buffer(), _Pool()
