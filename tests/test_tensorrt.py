"""The TensorRT path without a GPU: version gates, build options through the manifest, the ONNX each
strongly typed build parses (checked against TensorRT's rules for every graph of every family), the Q/DQ
graph's structure, the INT8 -> FP16 -> FP32 fallback, the timing cache, and the runtime's memory and
thread discipline on a fake TensorRT (tests/fake_tensorrt.py) that executes plans with ONNX Runtime."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import types
import warnings
from pathlib import Path
from typing import Any

import nanotrt.engines.tensorrt as te
import nanotrt.pipeline.trt_build as tb
import numpy as np
import onnx
import pytest
from conftest import PAIRS, TEXTS
from fake_tensorrt import Cuda, FakeTensorRT, make_plan, tensorrt_rules
from nanotrt.calibration.quantize import weight_matmuls
from nanotrt.pipeline.build import build
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner
from onnx import numpy_helper
from typer.testing import CliRunner

from nanotrt.cli import app

FIX = Path(__file__).parent / "fixtures" / "glue"
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRATCH = 1_000_003  # an odd size, to tell the scratch allocation from I/O buffers


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """Fake TensorRT + CUDA + Polygraphy loaders: nanotrt's own build_plan runs, the fake records the ONNX
    given to the parser and refuses what TensorRT would refuse."""
    return FakeTensorRT(scratch=SCRATCH).install(monkeypatch, polygraphy=True)


@pytest.fixture
def art(artifacts: dict[str, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(artifacts["bert"], dst)
    return dst


# --- version gate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,ok", [("8.6.1", False), ("10.0.1", False), ("10.1.0", True), ("10.3.0", True),
                                        ("11.4.1", True), ("12.0.0", False)])
def test_version_gate(version: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTensorRT(version).install(monkeypatch)
    if ok:
        assert te.require_runtime().__version__ == version
        assert tb.require_builder().__version__ == version
    else:
        with pytest.raises(NanotrtError, match="too old|newer than"):
            te.require_runtime()


def test_runtime_needs_no_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lean-runtime-only device (tensorrt_lean, no Builder) can run plans; building says what is missing."""
    FakeTensorRT("10.3.0", builder=False, module="tensorrt_lean").install(monkeypatch)
    assert te.require_runtime().__name__ == "tensorrt_lean"
    with pytest.raises(NanotrtError, match="not installed"):
        tb.require_builder()


def test_stubs_only_is_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs imports as
    for name in ("tensorrt_lean", "tensorrt_dispatch"):
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    with pytest.raises(NanotrtError, match="TensorRT is not installed"):
        te.require_runtime()


# --- build options -----------------------------------------------------------------------------------

def test_build_options_roundtrip_through_manifest(fake: Any, art: Path) -> None:
    """The CLI's TensorRT options land in manifest.json as JSON and read back equal; a re-run is a no-op."""
    args = ["build", str(art), "--backend", "tensorrt", "--fp16", "--opt-shape", "4x32", "--max-shape", "8x64",
            "--workspace-mb", "256"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    opts = json.loads((art / "manifest.json").read_text())["variants"]["trt-fp16"]["options"]
    assert opts["tensorrt"] == "10.3.0"
    assert tb.BuildOptions.from_json(opts) == tb.BuildOptions((1, 1), (4, 32), (8, 64), 256)
    calls = len(fake.calls)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "up to date" in res.output
    assert len(fake.calls) == calls


def test_profile_defaults_and_checks(fake: Any, art: Path) -> None:
    max_length = Manifest.load(art).tokenizer["max_length"]
    assert tb.BuildOptions().resolve(max_length).max_shape == (32, max_length)  # not 512: scratch sized for it
    with pytest.raises(NanotrtError, match="exceeds the artifact's tokenizer max_length"):
        build(art, backend="tensorrt", trt_options=tb.BuildOptions(max_shape=(32, max_length + 1)).to_json())
    with pytest.raises(NanotrtError, match="needs --version-compatible"):
        build(art, backend="tensorrt", trt_options=tb.BuildOptions(exclude_lean_runtime=True).to_json())
    with pytest.raises(NanotrtError, match="min <= opt <= max"):
        tb.BuildOptions(min_shape=(4, 1), opt_shape=(1, 8), max_shape=(8, 8)).resolve(max_length)
    with pytest.raises(NanotrtError, match="BATCHxSEQ"):
        tb.parse_shape("8,128")
    assert fake.calls == []


def test_legacy_calib_cache_is_gone(art: Path) -> None:
    res = CliRunner().invoke(app, ["build", str(art), "--backend", "tensorrt", "--legacy-calib-cache"])
    assert res.exit_code != 0 and "No such option" in res.output


# --- what the strongly typed build parses -------------------------------------------------------------

def _types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def _by_variant(fake: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in fake.calls:  # the staging folder is .VARIANT.<hex>.tmp
        out.setdefault(c["path"].parent.name.split(".")[1], []).append(c)
    return out


def _dtype_of(model: onnx.ModelProto, name: str) -> int:
    g = onnx.shape_inference.infer_shapes(model).graph
    vi = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    return vi.get(name, next((i.data_type for i in g.initializer if i.name == name), 0))


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "distilbert"])
def test_every_graph_of_every_trt_variant_passes_tensorrt_rules(fake: Any, artifacts: dict[str, Path],
                                                                 tmp_path: Path, family: str) -> None:
    """trt-fp16 and trt-int8 of each family: every graph (embeddings, layers, ramps) parses under TensorRT's
    rules and ends in the variant's own precision (INT8: all but the embeddings, which have no GEMM). With
    ORT's default bias quantization every ramp's INT8 graph had an INT32 DequantizeLinear (defect 1)."""
    art = tmp_path / family
    shutil.copytree(artifacts[family], art)
    build(art, backend="tensorrt", fp16=True, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    assert fake.violations == []
    m = Manifest.load(art)
    sched = m.schedule()
    for variant in ("trt-fp16", "trt-int8"):
        names = m.schedule(variant).names()
        assert len(names) == len(sched.names())  # ALBERT: its one shared layer once
        for name in names:
            e = m.graphs[name]
            src = (m.root / e["file"]).parent / e["source_onnx"]
            assert tensorrt_rules(src) == [], name
            assert "fallback" not in e, (name, e.get("fallback"))
            unit = m.graphs[name]["file"].rsplit("/", 1)[-1].split(".")[0]
            gemms = weight_matmuls(m.path(unit))  # none in the embeddings but ALBERT's projection
            assert e["precision"] == (variant[4:] if gemms or variant == "trt-fp16" else "fp16"), name
    parsed = {c["path"].name for c in _by_variant(fake)["trt-int8"]}
    assert {f"{u}.qdq.onnx" for u in sched.layers + sched.ramps} <= parsed


def test_strongly_typed_build_parses_the_precision_graph(fake: Any, art: Path) -> None:
    """FP16: FP16 weights, FP32 I/O, LayerNorm in FP32. INT8: the same FP16 graph with Q/DQ on the GEMM
    inputs (FP16 scales, opset 19), so that only the GEMMs change precision."""
    build(art, backend="tensorrt", fp16=True, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    by_variant = _by_variant(fake)
    fp32_io = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    int8 = [c for c in by_variant["trt-int8"] if any(n.op_type == "QuantizeLinear" for n in c["model"].graph.node)]
    for c in by_variant["trt-fp16"] + int8:
        g = c["model"].graph
        assert onnx.TensorProto.FLOAT16 in _types(c["model"]), c["path"].name
        assert {i.type.tensor_type.elem_type for i in [*g.input, *g.output]} <= fp32_io
        producer = {o: n for n in g.node for o in n.output}
        for n in g.node:
            if n.op_type == "LayerNormalization":  # its data input is cast up to FP32
                cast = producer[n.input[0]]
                assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
            if n.op_type == "Softmax":  # as the FP16 graph runs it
                assert _dtype_of(c["model"], n.input[0]) == onnx.TensorProto.FLOAT16
    for c in int8:
        g = c["model"].graph
        assert max(o.version for o in c["model"].opset_import if o.domain in ("", "ai.onnx")) == 19
        for n in g.node:
            if n.op_type == "DequantizeLinear":
                assert _dtype_of(c["model"], n.output[0]) == onnx.TensorProto.FLOAT16, n.name
    for name in m.schedule("trt-int8").names():
        e = m.graphs[name]
        assert e["format"] == "trt-plan" and e["scratch_bytes"] > SCRATCH and "out:" + e["outputs"][0]["name"] in e["io_bytes"]
        assert e["rel_error"] < 0.15  # measured: the fake runs the parsed ONNX, so this is the real graph error
        src = (m.root / e["file"]).parent / e["source_onnx"]
        assert src.is_file(), "gpu_check compares each plan with ORT on this ONNX"
    info = m.data["variants"]["trt-int8"]
    assert info["scratch_bytes"] == max(m.graphs[n]["scratch_bytes"] for n in m.schedule("trt-int8").names())


def test_int8_falls_back_to_fp16_then_fp32(fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def error(plan: Path, ref: Path, batches: object, opts: object) -> float:
        parsed = fake.calls[-1]["path"].name
        if parsed == "layer_00.qdq.onnx":
            return 0.5  # too far: FP16 next
        if parsed.startswith("layer_01."):
            return 0.5  # INT8 and FP16 too far: FP32
        return 0.01

    monkeypatch.setattr(tb, "plan_error", error)
    build(art, backend="tensorrt", int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    prec = {m.graphs[n]["index"]: m.graphs[n]["precision"] for n in m.schedule("trt-int8").layers}
    assert prec == {0: "fp16", 1: "fp32", 2: "int8"}
    info = m.data["variants"]["trt-int8"]
    assert set(info["kept_higher"]) == {"embeddings", "layer_00", "layer_01"}
    assert m.graphs["trt-int8/layer_01"]["source_onnx"].endswith("graphs/layer_01.onnx")
    vdir = art / info["dir"]
    assert sorted(p.name.split(".", 1)[1] for p in vdir.glob("layer_0*.*onnx")) == ["fp16.onnx", "qdq.onnx"]


def test_a_graph_tensorrt_cannot_build_falls_back(fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build failure is a fallback like a measured error, per graph: INT8 -> FP16 -> FP32, the reason
    recorded; the rest of the variant is unaffected."""
    import fake_tensorrt

    real = fake_tensorrt.tensorrt_rules

    def rules(path: str | Path, profile: Any = None) -> list[str]:
        name = Path(path).name
        if name in ("ramp_01.qdq.onnx", "layer_02.qdq.onnx", "layer_02.fp16.onnx"):
            return ["refused for the test"]
        return real(path, profile)

    monkeypatch.setattr(fake_tensorrt, "tensorrt_rules", rules)
    build(art, backend="tensorrt", int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    assert m.graphs["trt-int8/ramp_01"]["precision"] == "fp16"
    assert "refused for the test" in m.graphs["trt-int8/ramp_01"]["fallback"]["int8"]
    assert m.graphs["trt-int8/layer_02"]["precision"] == "fp32"
    assert set(m.graphs["trt-int8/layer_02"]["fallback"]) == {"int8", "fp16"}
    assert m.graphs["trt-int8/ramp_00"]["precision"] == "int8"
    assert set(m.data["variants"]["trt-int8"]["kept_higher"]) == {"embeddings", "ramp_01", "layer_02"}


def test_a_graph_no_precision_builds_fails_the_variant_and_keeps_the_artifact(
        fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fake_tensorrt

    build(art, backend="tensorrt", fp16=True)
    before = (art / "manifest.json").read_bytes()
    monkeypatch.setattr(fake_tensorrt, "tensorrt_rules", lambda path, profile=None: ["refused"]
                        if Path(path).name.startswith("layer_01") else [])
    with pytest.raises(NanotrtError, match="TensorRT cannot build layer_01.onnx: .*refused"):
        build(art, backend="tensorrt", fp16=True, trt_options=tb.BuildOptions(max_shape=(4, 16)).to_json())
    assert (art / "manifest.json").read_bytes() == before
    assert not list(art.glob(".trt-fp16.*.tmp"))


# --- the fake's TensorRT rules can fail ---------------------------------------------------------------

def _qdq(art: Path, tmp_path: Path, unit: str, **extra: object) -> Path:
    from nanotrt.calibration import quantize as q

    m = Manifest.load(art)
    h = m.data["hidden_size"]
    rng = np.random.default_rng(0)
    batches = [{"hidden_states": rng.standard_normal((2, 5, h)).astype(np.float32),
                "attention_mask": np.ones((2, 5), np.int64)} for _ in range(2)]
    names = [i["name"] for i in m.graphs[unit]["inputs"]]
    dst = tmp_path / f"{unit}.onnx"
    q.quantize_static_qdq(m.path(unit), dst, [{k: b[k] for k in names} for b in batches], names, for_tensorrt=True)
    return dst


def test_rules_refuse_what_tensorrt_refuses(art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rule on a graph that breaks it: ORT's default INT32 bias DequantizeLinear, an asymmetric zero
    point, a per-channel activation scale, a com.microsoft op, a profile that misses an input."""
    from nanotrt.calibration import quantize as q
    from onnx import helper

    monkeypatch.setitem(q.TRT_QDQ_OPTIONS, "QuantizeBias", True)  # ORT's default: the INT8 build before the fix
    bad = tensorrt_rules(_qdq(art, tmp_path, "ramp_00"))
    assert any("IDequantizeLayer takes INT8 only" in b for b in bad), bad
    monkeypatch.setitem(q.TRT_QDQ_OPTIONS, "QuantizeBias", False)
    path = _qdq(art, tmp_path, "ramp_00")
    assert tensorrt_rules(path) == []

    model = onnx.load(str(path))
    g = model.graph
    q_node = next(n for n in g.node if n.op_type == "QuantizeLinear")
    zp = next(i for i in g.initializer if i.name == q_node.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    onnx.save(model, str(tmp_path / "zp.onnx"))
    assert any("INT8 zeros" in b for b in tensorrt_rules(tmp_path / "zp.onnx"))

    model = onnx.load(str(path))
    g = model.graph
    q_node = next(n for n in g.node if n.op_type == "QuantizeLinear")
    h = Manifest.load(art).data["hidden_size"]
    for name, arr in ((q_node.input[1], np.full(h, 0.1, np.float32)), (q_node.input[2], np.zeros(h, np.int8))):
        init = next(i for i in g.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(arr, name))
    q_node.attribute.append(helper.make_attribute("axis", 2))
    onnx.save(model, str(tmp_path / "pc.onnx"))
    assert any("per-channel scale on an activation" in b for b in tensorrt_rules(tmp_path / "pc.onnx"))

    model = onnx.load(str(path))
    model.graph.node[0].domain = "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(tmp_path / "ms.onnx"))
    assert any("custom domain" in b for b in tensorrt_rules(tmp_path / "ms.onnx"))

    assert tensorrt_rules(path, {"hidden_states": ((1, 1, h), (1, 8, h), (4, 16, h))}) == []
    assert any("no profile" in b for b in tensorrt_rules(path, {}))
    assert any("static dims" in b for b in tensorrt_rules(path, {"hidden_states": ((1, 1, h + 1),) * 3}))


def test_an_input_outside_the_profile_is_one_clear_error(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt", trt_options=tb.BuildOptions(max_shape=(2, 8)).to_json())
    m = Manifest.load(art)
    name = m.schedule("trt-fp32").layers[0]
    h = m.data["hidden_size"]
    with te.TrtBackend() as be:
        eng = be.load(m, name)
        ok = be.run(eng, {"hidden_states": np.ones((2, 8, h), np.float32), "attention_mask": np.ones((2, 8), np.int64)})
        assert ok["hidden_states_out"].shape == (2, 8, h)
        with pytest.raises(NanotrtError, match="outside the plan's optimization profile"):
            be.run(eng, {"hidden_states": np.ones((3, 8, h), np.float32), "attention_mask": np.ones((3, 8), np.int64)})


# --- versions: cuda-python vs driver, Polygraphy vs TensorRT, the timing cache ------------------------

def test_cuda_python_newer_than_the_driver_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python 13 on a CUDA 12.6 driver (JetPack 6): every cudart call would fail 'insufficient driver'."""
    FakeTensorRT(cuda=Cuda(driver=12060, bindings=13000)).install(monkeypatch)
    with pytest.raises(NanotrtError, match=r"built for CUDA 13.0 but this driver supports CUDA 12.6 .*tensorrt-cu12.*jetson"):
        te.TrtBackend()
    FakeTensorRT(cuda=Cuda(driver=13000, bindings=12090)).install(monkeypatch)  # older bindings: fine
    with te.TrtBackend() as be:
        assert be.cudart.stream_flags == [be.cudart.cudaStreamNonBlocking]  # see engines/tensorrt.py: why


def test_polygraphy_too_old_or_failing_is_one_line(fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy
    import polygraphy.backend.trt as pt

    monkeypatch.setattr(polygraphy, "__version__", "0.49.26")
    with pytest.raises(NanotrtError, match=r"Polygraphy 0.49.26 is too old .*polygraphy>=0.50.3"):
        build(art, backend="tensorrt", fp16=True)
    monkeypatch.setattr(polygraphy, "__version__", "0.53.6")

    class Crashes:
        def __init__(self, *a: object, **k: object):
            pass

        def __call__(self) -> bytes:
            raise AttributeError("'tensorrt.ILayer' object has no attribute 'precision_is_set'")

    monkeypatch.setattr(pt, "EngineBytesFromNetwork", Crashes)
    with pytest.raises(NanotrtError, match="Polygraphy cannot drive TensorRT 10.3.0 .*precision_is_set"):
        build(art, backend="tensorrt", fp16=True)


def test_timing_cache_of_another_gpu_is_dropped_with_a_warning(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt", trt_options=tb.BuildOptions(max_shape=(2, 8)).to_json())
    cache = art / tb.TIMING_CACHE
    assert cache.read_bytes() == b"FAKECACHE"
    made = json.loads((art / tb.TIMING_CACHE_ID).read_text())
    assert made == {"tensorrt": "10.3.0", "gpu": "Fake Orin", "compute_capability": "8.7"}
    cache.write_bytes(b"OLD")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(art, backend="tensorrt", trt_options=tb.BuildOptions(max_shape=(2, 16)).to_json())  # same GPU: kept
    fake.cuda.gpu = "Fake H200"
    cache.write_bytes(b"OLD")
    seen: list[bytes] = []
    real = fake.polygraphy_loaders()["CreateConfig"]
    import polygraphy.backend.trt as pt

    def config(**kw: Any) -> Any:
        seen.append(Path(kw["load_timing_cache"]).read_bytes() if kw.get("load_timing_cache") else b"")
        return real(**kw)

    pt.CreateConfig = config  # restored by the fixture's monkeypatch
    with pytest.warns(UserWarning, match="timing cache .* was made for .*Fake Orin.*starting a fresh one"):
        build(art, backend="tensorrt", trt_options=tb.BuildOptions(max_shape=(2, 8)).to_json())
    assert seen[0] == b"" and b"OLD" not in seen
    assert json.loads((art / tb.TIMING_CACHE_ID).read_text())["gpu"] == "Fake H200"


def test_build_plan_is_polygraphy_strongly_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, art: Path) -> None:
    """No precision flags, TF32 off, one profile from the options, the timing cache saved."""
    FakeTensorRT("11.4.1").install(monkeypatch)
    import polygraphy.backend.trt as pt

    seen: dict[str, Any] = {}
    monkeypatch.setattr(pt, "NetworkFromOnnxPath", lambda path, **kw: seen.update(path=path, network=kw) or "net")
    monkeypatch.setattr(pt, "CreateConfig", lambda **kw: seen.update(config=kw) or "cfg")

    class Engine:
        def __init__(self, network: str, config: str, save_timing_cache: str):
            seen.update(engine=(network, config, save_timing_cache))

        def __call__(self) -> bytes:
            return b"PLAN"

    monkeypatch.setattr(pt, "EngineBytesFromNetwork", Engine)
    m = Manifest.load(art)
    entry = m.graphs["layer_00"]
    opts = tb.BuildOptions(opt_shape=(2, 16), max_shape=(8, 64), workspace_mb=64).resolve(128)
    tb.build_plan(m.path("layer_00"), tmp_path / "x.plan", entry["inputs"], opts, tmp_path / "t.cache")
    assert (tmp_path / "x.plan").read_bytes() == b"PLAN"
    assert seen["network"] == {"strongly_typed": True}
    cfg = seen["config"]
    assert cfg["tf32"] is False and not {"fp16", "int8", "bf16", "fp8", "calibrator"} & set(cfg)
    shapes = cfg["profiles"][0]["hidden_states"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((1, 1, 32), (2, 16, 32), (8, 64, 32))
    assert cfg["memory_pool_limits"] == {"WORKSPACE": 64 << 20}
    assert seen["engine"] == ("net", "cfg", str(tmp_path / "t.cache"))


# --- the Q/DQ graph for TensorRT ----------------------------------------------------------------------

def test_trt_qdq_graph_structure(art: Path, tmp_path: Path) -> None:
    """GEMM inputs quantized, no GEMM output re-quantized before its bias Add, symmetric INT8 with zero
    points 0, and the residual stream (every non-GEMM consumer) reads float."""
    from nanotrt.calibration.quantize import quantize_static_qdq, relative_error

    m = Manifest.load(art)
    src = m.path("layer_00")
    rng = np.random.default_rng(0)
    h = m.data["hidden_size"]
    batches = [{"hidden_states": rng.standard_normal((4, 12, h)).astype(np.float32),
                "attention_mask": np.ones((4, 12), np.int64)} for _ in range(4)]
    dst = tmp_path / "q.onnx"
    assert quantize_static_qdq(src, dst, batches, ["hidden_states", "attention_mask"], for_tensorrt=True)
    g = onnx.load(str(dst)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"})
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point must be int8 0 (symmetric)"
        if n.op_type == "QuantizeLinear":
            p = producer.get(n.input[0])
            assert p is None or p.op_type not in ("MatMul", "Gemm"), f"GEMM output re-quantized at {n.name}"
        else:
            assert {c.op_type for c in consumers[n.output[0]]} <= {"MatMul", "Gemm"}, f"{n.name} feeds non-GEMMs"
    gemms_in_int8 = [n for n in g.node if n.op_type == "MatMul"
                     and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(gemms_in_int8) >= 4  # Q, K, V, attention output (the FFN down-projection stays float)
    assert relative_error(src, dst, batches) < 0.1


def test_quantization_leaves_the_root_logger_alone(art: Path, tmp_path: Path) -> None:
    from nanotrt.calibration.quantize import quantize_static_qdq

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.INFO)
    try:
        m = Manifest.load(art)
        h = m.data["hidden_size"]
        b = [{"hidden_states": np.ones((2, 4, h), np.float32), "attention_mask": np.ones((2, 4), np.int64)}]
        quantize_static_qdq(m.path("layer_00"), tmp_path / "q.onnx", b, ["hidden_states", "attention_mask"],
                            for_tensorrt=True)
        assert root.level == logging.INFO and root.handlers == handlers
    finally:
        root.setLevel(level)


# --- the runtime on the fake ----------------------------------------------------------------------------

SENTS = TEXTS + PAIRS + ["the cat sat on the mat", "he did n't went home"]


def test_runner_streams_plans_like_ort(fake: Any, art: Path) -> None:
    """Under a 2-layer budget with prefetch on and off: the same logits bit for bit, equal to ORT's on the
    same graphs; the prefetch thread binds the device; the scratch is allocated once, at reservation, and
    counted with the I/O buffers in the budget."""
    build(art, backend="tensorrt")  # FP32 plans of the exported graphs
    with Runner.from_artifact(art) as r:
        ref = r.predict(SENTS, batch_size=3).ramp_logits
    with Runner.from_artifact(art, backend="tensorrt") as probe:  # 2 graphs + these batches' activations
        acts = max(probe.acts.block([probe.tokenizer(SENTS[i:i + 3])["input_ids"].shape])
                   for i in range(0, len(SENTS), 3))
        budget = probe.reserved + 2 * probe.largest + acts
    outs, before = [], len(fake.cuda.mallocs)
    for prefetch in (True, False):
        with Runner.from_artifact(art, backend="tensorrt", memory_budget=budget, prefetch=prefetch) as r:
            res = r.predict(SENTS, batch_size=3)
            scratch = r.manifest.data["variants"]["trt-fp32"]["scratch_bytes"]
            assert res.stats.cache["backend_reserved_bytes"] > scratch
            assert res.stats.cache["releases"] > 0  # it did swap
            assert r.backend.grown == 0  # type: ignore[attr-defined]
        outs.append(res.ramp_logits)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], ref, atol=1e-5)
    assert len(fake.cuda.set_device_threads) >= 2 and threading.get_ident() in fake.cuda.set_device_threads
    assert fake.cuda.mallocs[before:].count(scratch) == 2  # once per runner, never grown by a load
    assert not fake.cuda.device and not fake.cuda.host  # everything freed at close


def test_budget_counts_the_working_set(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt")
    m = Manifest.load(art)
    biggest = max(m.graphs[n]["bytes"] for n in m.schedule("trt-fp32").names())
    with pytest.raises(NanotrtError, match="working set"):
        Runner.from_artifact(art, backend="tensorrt", memory_budget=str(biggest + 1))


def test_scratch_grows_between_runs_new_buffer_first(fake: Any, art: Path) -> None:
    """The runner never grows the scratch (test above); a plan opened beyond the reservation, on another
    thread, gets a new buffer before the old one is freed, and live contexts are re-pointed to it."""
    build(art, backend="tensorrt")
    m = Manifest.load(art)
    name = m.schedule("trt-fp32").layers[0]
    with te.TrtBackend() as be:
        be.reserve(m, [name])  # only this graph: smaller than the next plan needs
        first = be.load(m, name)
        assert be.grown == 0
        small, start = be.scratch.ptr, len(fake.cuda.events)
        big = make_plan(str(m.path("layer_01")), be.scratch.size * 2)
        t = threading.Thread(target=be.open_plan, args=(big, "big", len(big)))
        t.start()
        t.join()
        assert be.grown == 1
        assert fake.cuda.events[start:] == [("malloc", be.scratch.ptr), ("free", small)]
        assert first.context is not None and first.context.memory == (be.scratch.ptr, be.scratch.size)
        h = m.data["hidden_size"]
        out = be.run(first, {"hidden_states": np.ones((2, 3, h), np.float32), "attention_mask": np.ones((2, 3), np.int64)})
        assert out["hidden_states_out"].shape == (2, 3, h)


def test_version_compatible_and_lean_runtime_plans(fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = tb.BuildOptions(version_compatible=True, exclude_lean_runtime=True).to_json()
    monkeypatch.setenv(te.LEAN_RUNTIME_ENV, "/opt/trt/libnvinfer_lean.so.10")  # the build reads its plans too
    build(art, backend="tensorrt", trt_options=opts)
    monkeypatch.delenv(te.LEAN_RUNTIME_ENV)
    with pytest.raises(NanotrtError, match=te.LEAN_RUNTIME_ENV):
        Runner.from_artifact(art, backend="tensorrt").predict(["x"])
    monkeypatch.setenv(te.LEAN_RUNTIME_ENV, "/opt/trt/libnvinfer_lean.so.10")
    with Runner.from_artifact(art, backend="tensorrt") as r:
        r.predict(["x"])  # the fake refuses a lean runtime whose parent IRuntime is gone (weak references)
        lean = [rt for rt in (ref() for ref in fake.runtimes) if rt is not None and rt.lean_path]
        assert lean and all(rt.engine_host_code_allowed for rt in lean)
    assert fake.loaded_runtimes and set(fake.loaded_runtimes) == {"/opt/trt/libnvinfer_lean.so.10"}


def test_version_compatible_plans_allow_host_code(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt", trt_options=tb.BuildOptions(version_compatible=True).to_json())
    with Runner.from_artifact(art, backend="tensorrt") as r:  # the fake refuses them without host code
        assert r.predict(["x"]).predictions[0].exit_layer == r.n


# --- type checking --------------------------------------------------------------------------------------

def test_mypy_catches_a_misspelled_tensorrt_api(tmp_path: Path) -> None:
    """The stubs really type-check TensorRT calls: the right name passes, a misspelled one fails."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "scripts" / "prepare_typings.py")], check=True, capture_output=True)
    body = "import tensorrt as trt\ndef f(e: trt.ICudaEngine) -> int:\n    return int(e.{})\n"
    (tmp_path / "good.py").write_text(body.format("device_memory_size_v2"))
    (tmp_path / "bad.py").write_text(body.format("device_memory_size_v3"))
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "/dev/null", "--follow-imports=silent",
                          "--python-version", "3.11", "good.py", "bad.py"], capture_output=True, text=True,
                         env={"MYPYPATH": str(root / "typings"), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    # (the stubs themselves have errors; the project's mypy config ignores those)
    errors = [line for line in res.stdout.splitlines() if ": error:" in line and line.startswith(("good", "bad"))]
    assert len(errors) == 1 and errors[0].startswith("bad.py:3") and "device_memory_size_v3" in errors[0], res.stdout


# --- benchmarks/gpu_check.py ------------------------------------------------------------------------------

def test_gpu_check_runs_end_to_end_on_the_fake(fake: Any, art: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU check's own logic (shapes within the profile, source ONNX lookup, runner comparison, report),
    so that the first run on a GPU fails only for TensorRT reasons."""
    gpu_check = _gpu_check(monkeypatch)
    build(art, backend="tensorrt", fp16=True, trt_options=tb.BuildOptions(max_shape=(8, 16)).to_json())
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(art), "--out", str(tmp_path / "out")])
    assert gpu_check.main() == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    plans = report["variants"]["trt-fp16"]["plans"]
    assert set(next(iter(plans.values()))["rel_error_vs_ort"]) == {"1x1", "1x16", "8x1", "8x16"}  # within 8x16
    assert report["variants"]["trt-fp16"]["runner"]["prefetch_on"]["loads"] > 0
    assert "PASS" in (tmp_path / "out" / "gpu_check.md").read_text()


def _gpu_check(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    return gpu_check


def test_gpu_check_prerequisites_name_what_is_missing(fake: Any, art: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _gpu_check(monkeypatch)
    have, missing = gpu_check.prerequisites(art, "cola", 1024, data_dir=str(FIX))
    assert missing == [] and "TensorRT 10.3.0" in have[0] and "CUDA 12.6" in have[1]
    fake.cuda.bindings = 13000  # cuda-python 13 on JetPack 6's CUDA 12.6 driver
    _, missing = gpu_check.prerequisites(art, "cola", 1024, data_dir=str(art))  # no GLUE there
    assert [m.split(":")[0] for m in missing] == ["cuda-python vs driver", "calibration data"]
    fake.cuda.bindings = 12090
    _, missing = gpu_check.prerequisites(tmp := art / "nope", "cola", 64 << 20, data_dir=str(FIX))
    assert [m.split(":")[0] for m in missing] == ["GPU memory", "artifact"] and str(tmp) in missing[1]


@pytest.mark.parametrize("cuda,expect", [("11.8", "needs a CUDA 12 (r535+) or 13 (580.65+) driver"),
                                         ("12.4", "[tensorrt-build,tensorrt-cu12]"),
                                         ("13.0", "[tensorrt-build,tensorrt-cu13]")])
def test_gpu_check_sh_picks_the_extra_of_the_driver_and_stops_before_step_1(
        art: Path, tmp_path: Path, cuda: str, expect: str) -> None:
    """Here (no TensorRT, no cuda-python) the script must stop at step 0 naming the install line for the
    driver's CUDA, never reach `nanotrt build`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$1\" in -L) echo 'GPU 0: Fake';; --query*) echo 999.1;; "
                   f"*) echo '| NVIDIA-SMI 999.1   Driver Version: 999.1   CUDA Version: {cuda}     |';; esac\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    res = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(art)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert expect in res.stdout
    if cuda != "11.8":
        assert "MISSING TensorRT / Polygraphy: TensorRT is not installed" in res.stdout
    assert "nanotrt build" not in res.stdout and not (tmp_path / "out").exists()
