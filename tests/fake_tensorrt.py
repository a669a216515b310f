"""A stand-in for TensorRT and cuda-python, for GPU-free tests of the TensorRT backend's own logic.

"Device" memory is host memory (real pointers: copies and views are real); a "plan" is a JSON header plus
the bytes of the ONNX graph the parser was given, and "executing" it runs that graph on ONNX Runtime at
the addresses bound to the context. So a runner on this fake exercises nanotrt's real I/O path (shapes,
pointers, pinned staging, the shared scratch, threads) and must reproduce ONNX Runtime's outputs. The fake
checks what the real API requires: USER_MANAGED contexts get device memory before they run, that memory
is large enough and still allocated, tensors are bound, and freed pointers are never used.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import types
from enum import Enum
from typing import Any

import numpy as np
import pytest

PLAN_MAGIC = b"FAKEPLAN"


class DataType(Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT64 = "int64"
    INT32 = "int32"


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


def make_plan(onnx_path: str, scratch: int, **flags: bool) -> bytes:
    """A fake plan of an ONNX file: I/O signatures read from the graph, as TensorRT's parser would."""
    import onnx

    model = onnx.load(onnx_path)
    dtypes = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}

    def sig(v: Any) -> dict[str, Any]:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": dtypes[v.type.tensor_type.elem_type], "shape": dims}

    head = json.dumps({"inputs": [sig(v) for v in model.graph.input], "outputs": [sig(v) for v in model.graph.output],
                       "scratch": scratch, **flags}).encode()
    return PLAN_MAGIC + len(head).to_bytes(4, "little") + head + model.SerializeToString()


class Cuda:
    """cuda.bindings.runtime: (err, value) tuples, real host memory behind every pointer."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's names
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.device: dict[int, np.ndarray] = {}
        self.host: dict[int, np.ndarray] = {}
        self.set_device_threads: set[int] = set()
        self.mallocs: list[int] = []  # sizes of device allocations, in order
        self.events: list[tuple[str, int]] = []  # ("malloc" | "free", ptr)

    def _new(self, table: dict[int, np.ndarray], n: int) -> int:
        arr = np.zeros(max(n, 1), np.uint8)
        ptr = arr.ctypes.data
        table[ptr] = arr
        return ptr

    def cudaSetDevice(self, d: int) -> tuple[int]:  # noqa: N802
        self.set_device_threads.add(threading.get_ident())
        return (0,)

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        self.mallocs.append(n)
        ptr = self._new(self.device, n)
        self.events.append(("malloc", ptr))
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        assert ptr in self.device, "cudaFree of an unknown or already freed pointer"
        del self.device[ptr]
        self.events.append(("free", ptr))
        return (0,)

    def cudaMallocHost(self, n: int) -> tuple[int, int]:  # noqa: N802
        return 0, self._new(self.host, n)

    def cudaFreeHost(self, ptr: int) -> tuple[int]:  # noqa: N802
        assert ptr in self.host, "cudaFreeHost of an unknown or already freed pointer"
        del self.host[ptr]
        return (0,)

    def alive(self, ptr: int, n: int) -> bool:
        for table in (self.device, self.host):
            for base, arr in table.items():
                if base <= ptr and ptr + n <= base + arr.nbytes:
                    return True
        return False

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: Any) -> tuple[int]:  # noqa: N802
        assert self.alive(dst, n) and self.alive(src, n), "copy touches freed or unallocated memory"
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaMemGetInfo(self) -> tuple[int, int, int]:  # noqa: N802
        total = 8 << 30
        return 0, total - sum(a.nbytes for a in self.device.values()), total

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 0x5EED

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[int]:  # noqa: N802
        return (0,)


class Context:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.memory: tuple[int, int] | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_device_memory(self, ptr: int, size: int) -> None:
        assert size >= self.engine.device_memory_size_v2, "device memory smaller than the engine needs"
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        sig = next(o for o in self.engine.head["outputs"] if o["name"] == name)
        first = next(iter(self.shapes.values()))
        return tuple(first[i] if isinstance(d, str) else int(d) for i, d in enumerate(sig["shape"]))

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.cuda
        assert isinstance(stream, int)
        assert self.memory is not None, "USER_MANAGED context ran without set_device_memory"
        assert self.memory[0] in cuda.device, "context runs in freed scratch memory"
        assert cuda.alive(*self.memory)
        feeds = {}
        for sig in self.engine.head["inputs"]:
            n, dt, shape = sig["name"], np.dtype(sig["dtype"]), self.shapes[sig["name"]]
            nbytes = int(np.prod(shape)) * dt.itemsize
            assert cuda.alive(self.addresses[n], nbytes)
            raw = (ctypes.c_byte * nbytes).from_address(self.addresses[n])
            feeds[n] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
        outs = self.engine.session.run(None, feeds)
        for sig, val in zip(self.engine.head["outputs"], outs, strict=True):
            val = np.ascontiguousarray(val, dtype=np.dtype(sig["dtype"]))
            assert cuda.alive(self.addresses[sig["name"]], val.nbytes)
            ctypes.memmove(self.addresses[sig["name"]], val.ctypes.data, val.nbytes)
        self.engine.runs += 1
        return True


class Engine:
    def __init__(self, plan: bytes, cuda: Cuda):
        import onnxruntime as ort

        n = int.from_bytes(plan[8:12], "little")
        self.head = json.loads(plan[12:12 + n])
        from nanotrt.engines.onnxruntime import session_options

        self.session = ort.InferenceSession(plan[12 + n:], session_options(ort), providers=["CPUExecutionProvider"])
        self.cuda = cuda
        self.device_memory_size_v2 = int(self.head["scratch"])
        self.names = [s["name"] for s in self.head["inputs"]] + [s["name"] for s in self.head["outputs"]]
        self.num_io_tensors = len(self.names)
        self.runs = 0

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if any(s["name"] == name for s in self.head["inputs"]) else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        sig = next(s for s in self.head["inputs"] + self.head["outputs"] if s["name"] == name)
        return DataType(np.dtype(sig["dtype"]).name)

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy) -> Context:
        assert strategy is ExecutionContextAllocationStrategy.USER_MANAGED
        return Context(self)


class FakeTensorRT:
    """Installs fake ``tensorrt`` (or ``tensorrt_lean``) and ``cuda.bindings.runtime`` modules."""

    def __init__(self, version: str = "10.3.0", builder: bool = True, module: str = "tensorrt"):
        self.cuda = Cuda()
        self.runtimes: list[Any] = []
        self.loaded_runtimes: list[str] = []
        fake = self

        class Runtime:
            def __init__(self, logger: Any, lean_path: str | None = None):
                self.engine_host_code_allowed = False
                self.lean_path = lean_path
                fake.runtimes.append(self)

            def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
                if not plan.startswith(PLAN_MAGIC):
                    return None
                head = json.loads(plan[12:12 + int.from_bytes(plan[8:12], "little")])
                if head.get("version_compatible") and not self.engine_host_code_allowed:
                    return None  # what TensorRT does: host code not allowed
                if head.get("exclude_lean_runtime") and self.lean_path is None:
                    return None
                return Engine(plan, fake.cuda)

            def load_runtime(self, path: str) -> Runtime:
                fake.loaded_runtimes.append(path)
                return Runtime(None, path)

        class Logger:
            WARNING = 2

            def __init__(self, severity: int = 2):
                self.severity = severity

        mod = types.ModuleType(module)
        mod.__version__ = version  # type: ignore[attr-defined]
        mod.Runtime = Runtime  # type: ignore[attr-defined]
        mod.Logger = Logger  # type: ignore[attr-defined]
        mod.TensorIOMode = TensorIOMode  # type: ignore[attr-defined]
        mod.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy  # type: ignore[attr-defined]
        mod.DataType = DataType  # type: ignore[attr-defined]
        mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
        if builder:
            mod.Builder = object  # type: ignore[attr-defined]
        self.module = mod
        self.name = module

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
        cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        bindings.runtime = self.cuda  # type: ignore[attr-defined]
        cuda_pkg.bindings = bindings  # type: ignore[attr-defined]
        for name in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch"):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]  # "not installed"
        monkeypatch.setitem(sys.modules, self.name, self.module)
        monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", self.cuda)  # type: ignore[arg-type]
        return self
