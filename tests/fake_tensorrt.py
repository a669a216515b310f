"""A stand-in for TensorRT, Polygraphy's TensorRT loaders and cuda-python, for GPU-free tests of the
TensorRT build and runtime logic.

"Device" memory is host memory (real pointers: copies and views are real); a "plan" is a JSON header plus
the bytes of the ONNX graph the parser was given, and "executing" it runs that graph on ONNX Runtime at
the addresses bound to the context. So a runner on this fake exercises nanotrt's real I/O path (shapes,
pointers, pinned staging, the shared scratch, threads) and must reproduce ONNX Runtime's outputs. The fake
checks what the real API requires: USER_MANAGED contexts get device memory before they run, that memory
is large enough and still allocated, tensors are bound, freed pointers are never used, input shapes are
inside the plan's optimization profile, a lean runtime's parent is still alive.

Building goes through nanotrt's real ``build_plan`` (Polygraphy's ``Profile`` is real; its network, config
and engine loaders are replaced). Before a plan is made, ``tensorrt_rules`` checks the ONNX against the
rules of a strongly typed TensorRT 10.1 network that this project relies on (onnx-tensorrt 10.1's
operator table and its Q/DQ importer): supported ops, types and opset; Q/DQ data and zero-point types,
symmetric zero points, positive constant scales, per-tensor activations and per-channel weights only; a
profile that covers every input. A violation fails the build as TensorRT would (``PolygraphyException``).
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import types
import weakref
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLAN_MAGIC = b"FAKEPLAN"
# onnx-tensorrt 10.1 GA, docs/operators.md: the ops marked supported and their types (TensorRT 10.1 is the
# oldest TensorRT nanotrt supports; later parsers add ops, never remove these).
OPS: dict[str, list[str]] = json.loads((Path(__file__).parent / "fixtures" / "onnx_tensorrt_10.1_ops.json").read_text())
# Where the importer accepts more than the table says: CumSum is a loop of IElementWiseLayer sums with no
# type check (onnx-tensorrt 10.1 onnxOpImporters.cpp), and RoBERTa's position ids are a CumSum of the INT32
# mask. Unverified on hardware (README).
OPS["CumSum"] = sorted({*OPS["CumSum"], "INT32", "INT64"})
OPSETS = (9, 20)  # the parser's opset range in TensorRT 10.0/10.1
IO_TYPES = {"FLOAT", "FLOAT16", "INT32", "INT64", "BOOL"}
_TYPE = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "INT8": "INT8", "INT32": "INT32", "INT64": "INT64",
         "BOOL": "BOOL", "UINT8": "UINT8", "DOUBLE": "DOUBLE"}


def _toposorted(model: Any) -> Any:
    """The parser sorts nodes itself (ORT's FP16 converter appends its casts at the end)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    have = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    todo, order = list(g.node), []
    while todo:
        ready = [n for n in todo if all(i in have for i in n.input)]
        if not ready:
            break  # a cycle: the checker names it
        for n in ready:
            have.update(n.output)
        order += ready
        todo = [n for n in todo if all(n is not r for r in ready)]
    del g.node[:]
    g.node.extend(order + todo)
    return model


def tensorrt_rules(onnx_path: str | Path, profile: dict[str, tuple[Any, Any, Any]] | None = None) -> list[str]:
    """What a strongly typed TensorRT 10.1 build would refuse in this graph (empty: it parses and builds).
    ``profile``: input name -> (min, opt, max) shapes, as the build's one optimization profile."""
    import onnx
    from onnx import numpy_helper

    model = _toposorted(onnx.load(str(onnx_path)))
    bad: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)  # strict type inference: what strong typing needs
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return [f"invalid graph: {str(e).splitlines()[0]}"]
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if not OPSETS[0] <= opset.get("ai.onnx", 0) <= OPSETS[1]:
        bad.append(f"opset {opset.get('ai.onnx')} outside the parser's {OPSETS[0]}-{OPSETS[1]}")
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
             for v in [*g.input, *g.output, *g.value_info]}
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    types.update({i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in g.initializer})
    for v in [*g.input, *g.output]:
        if types[v.name] not in IO_TYPES:
            bad.append(f"network I/O {v.name} is {types[v.name]}")
    for n in g.node:
        where = f"{n.op_type} {n.name}"
        if n.domain not in ("", "ai.onnx"):
            bad.append(f"{where}: custom domain {n.domain} (no plugin)")
        elif n.op_type not in OPS:
            bad.append(f"{where}: not supported by the parser")
        elif n.op_type != "DequantizeLinear" and n.input and n.input[0] and _TYPE.get(types.get(n.input[0], ""), "?") not in OPS[n.op_type]:
            bad.append(f"{where}: input {types.get(n.input[0])} not supported (only {', '.join(OPS[n.op_type])})")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            bad += [f"{where}: {msg}" for msg in _qdq_rules(n, types, consts, opset.get("ai.onnx", 0))]
    if profile is not None:
        bad += _profile_rules(g, profile)
    return bad


def _qdq_rules(n: Any, types: dict[str, str], consts: dict[str, np.ndarray], opset: int) -> list[str]:
    """onnx-tensorrt's QuantDequantLinearHelper, for INT8: symmetric (zero point INT8 0: without one ONNX
    means UINT8, which TensorRT would run as INT8), a constant positive scale, one scale per tensor for
    activations, per channel (1-D, one per output channel) only for constant weights; a DequantizeLinear
    takes INT8 (TensorRT's IDequantizeLayer: INT8/FP8/INT4, never INT32)."""
    bad = []
    data, scale = n.input[0], n.input[1]
    zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if n.op_type == "DequantizeLinear" and types.get(data) != "INT8":
        bad.append(f"input {data} is {types.get(data)}: IDequantizeLayer takes INT8 only here")
    if zp is None or zp not in consts:
        bad.append("no constant zero point (ONNX's default is UINT8)")
    elif consts[zp].dtype != np.int8 or consts[zp].any():
        bad.append(f"zero point {consts[zp].dtype} {consts[zp].ravel()[:3]}: TensorRT needs INT8 zeros")
    if scale not in consts:
        return [*bad, "scale is not a constant"]
    s = consts[scale]
    if not (s > 0).all():
        bad.append("scale not all positive")
    if s.size > 1:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if n.op_type == "QuantizeLinear" or data not in consts:
            bad.append("per-channel scale on an activation (TensorRT: per tensor)")
        elif s.ndim != 1 or consts[data].shape[axis] != s.size:
            bad.append(f"{s.size} scales for axis {axis} of a {consts[data].shape} weight")
    if n.op_type == "QuantizeLinear" and opset >= 19 and types.get(data) != types.get(scale):
        bad.append(f"{types.get(data)} input with a {types.get(scale)} scale (strongly typed, opset >= 19)")
    return bad


def _profile_rules(g: Any, profile: dict[str, tuple[Any, Any, Any]]) -> list[str]:
    bad = []
    for v in g.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        if v.name not in profile:
            if None in dims:
                bad.append(f"input {v.name} has dynamic dims but no profile")
            continue
        lo, opt, hi = (tuple(int(x) for x in s) for s in profile[v.name])
        if not len(lo) == len(opt) == len(hi) == len(dims):
            bad.append(f"profile of {v.name} has the wrong rank for {dims}")
        elif any(d is not None and not lo[i] == opt[i] == hi[i] == d for i, d in enumerate(dims)):
            bad.append(f"profile of {v.name} {lo}..{hi} disagrees with its static dims {dims}")
        elif not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            bad.append(f"profile of {v.name} is not min <= opt <= max")
    extra = set(profile) - {v.name for v in g.input}
    return bad + [f"profile names {sorted(extra)}, which are not network inputs"] * bool(extra)


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


def make_plan(onnx_path: str, scratch: int, profile: dict[str, Any] | None = None, **flags: bool) -> bytes:
    """A fake plan of an ONNX file: I/O signatures read from the graph, as TensorRT's parser would, and the
    optimization profile (input -> [min, opt, max]) the runtime must stay within."""
    import onnx

    model = onnx.load(onnx_path)
    dtypes = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}

    def sig(v: Any) -> dict[str, Any]:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": dtypes[v.type.tensor_type.elem_type], "shape": dims}

    head = json.dumps({"inputs": [sig(v) for v in model.graph.input], "outputs": [sig(v) for v in model.graph.output],
                       "scratch": scratch, "profile": profile, **flags}).encode()
    return PLAN_MAGIC + len(head).to_bytes(4, "little") + head + model.SerializeToString()


class Cuda:
    """cuda.bindings.runtime: (err, value) tuples, real host memory behind every pointer."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's names
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1  # noqa: N815

    def __init__(self, driver: int = 12060, bindings: int = 12090, gpu: str = "Fake Orin") -> None:
        self.driver, self.bindings, self.gpu = driver, bindings, gpu  # CUDA versions as 1000 * major + 10 * minor
        self.stream_flags: list[int] = []
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

    def cudaDriverGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return 0, self.driver

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return 0, self.bindings

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:  # noqa: N802
        return 0, types.SimpleNamespace(name=self.gpu.encode(), major=8, minor=7)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:  # noqa: N802
        self.stream_flags.append(flags)
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
        """False outside the optimization profile, as TensorRT's."""
        lo_hi = (self.engine.head.get("profile") or {}).get(name)
        if lo_hi is not None and not (len(shape) == len(lo_hi[0])
                                      and all(a <= x <= b for a, x, b in zip(lo_hi[0], shape, lo_hi[2], strict=True))):
            return False
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

    def __init__(self, version: str = "10.3.0", builder: bool = True, module: str = "tensorrt",
                 cuda: Cuda | None = None, scratch: int = 1_000_003):
        self.cuda = cuda or Cuda()
        self.runtimes: list[Any] = []  # weak references: the backend must keep the ones it uses alive
        self.calls: list[dict[str, Any]] = []  # one per plan build: the ONNX parsed, its model, the config
        self.violations: list[tuple[str, list[str]]] = []  # (ONNX file, what TensorRT would refuse)
        self.scratch = scratch  # device_memory_size_v2 of the first plan (then + 8 per plan)
        self.loaded_runtimes: list[str] = []
        fake = self

        class Runtime:
            def __init__(self, logger: Any, lean_path: str | None = None, parent: Runtime | None = None):
                self.engine_host_code_allowed = False
                self.lean_path = lean_path
                self.parent = weakref.ref(parent) if parent is not None else None
                fake.runtimes.append(weakref.ref(self))

            def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
                assert self.parent is None or self.parent() is not None, \
                    "the lean runtime is used after its parent IRuntime was destroyed"
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
                return Runtime(None, path, parent=self)

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

    # --- Polygraphy's TensorRT loaders, the way nanotrt's build_plan uses them -----------------------
    def polygraphy_loaders(self) -> dict[str, Any]:
        from polygraphy.exception import PolygraphyException

        fake = self

        def network_from_onnx_path(path: str, strongly_typed: bool = False) -> dict[str, Any]:
            assert strongly_typed, "nanotrt builds strongly typed networks only (TensorRT 11 has no other kind)"
            return {"path": path}

        def create_config(**kw: Any) -> dict[str, Any]:
            assert not {"fp16", "int8", "bf16", "fp8", "calibrator"} & {k for k, v in kw.items() if v}, \
                "weak-typing flags are refused in a strongly typed network"
            return kw

        class EngineBytesFromNetwork:
            def __init__(self, network: dict[str, Any], config: dict[str, Any], save_timing_cache: str | None = None):
                self.network, self.config, self.cache = network, config, save_timing_cache

            def __call__(self) -> bytes:
                import onnx

                path = self.network["path"]
                profile = {name: tuple(tuple(s) for s in (shp.min, shp.opt, shp.max))
                           for name, shp in self.config["profiles"][0].items()}
                fake.calls.append({"path": Path(path), "model": onnx.load(path), "config": self.config})
                bad = tensorrt_rules(path, profile)
                if bad:
                    fake.violations.append((Path(path).name, bad))
                    raise PolygraphyException(f"Failed to parse ONNX model {Path(path).name}: {bad[0]}")
                if self.cache:
                    Path(self.cache).write_bytes(b"FAKECACHE")
                return make_plan(path, fake.scratch + 8 * len(fake.calls), profile={k: [list(s) for s in v] for k, v in profile.items()},
                                 version_compatible=bool(self.config.get("version_compatible")),
                                 exclude_lean_runtime=bool(self.config.get("exclude_lean_runtime")))

        return {"NetworkFromOnnxPath": network_from_onnx_path, "CreateConfig": create_config,
                "EngineBytesFromNetwork": EngineBytesFromNetwork}

    def install(self, monkeypatch: pytest.MonkeyPatch, polygraphy: bool = False) -> FakeTensorRT:
        """``polygraphy``: also replace Polygraphy's TensorRT loaders, so builds run through the fake."""
        cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        bindings.runtime = self.cuda  # type: ignore[attr-defined]
        cuda_pkg.bindings = bindings  # type: ignore[attr-defined]
        for name in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch"):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]  # "not installed"
        monkeypatch.setitem(sys.modules, self.name, self.module)
        monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", self.cuda)  # type: ignore[arg-type]
        if polygraphy:
            import polygraphy.backend.trt as pt

            for name, loader in self.polygraphy_loaders().items():
                monkeypatch.setattr(pt, name, loader)
        return self
