"""The TensorRT path without a GPU: version gate, build options through the manifest, the ONNX each
strongly typed build parses, the Q/DQ graph's structure, the INT8 fallback, and the runtime's memory and
thread discipline on a fake TensorRT (tests/fake_tensorrt.py) that executes plans with ONNX Runtime."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import nanotrt.engines.tensorrt as te
import numpy as np
import onnx
import pytest
from conftest import PAIRS, TEXTS
from fake_tensorrt import FakeTensorRT, make_plan
from nanotrt.pipeline.build import build
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner
from onnx import numpy_helper
from typer.testing import CliRunner

from nanotrt.cli import app

FIX = Path(__file__).parent / "fixtures" / "glue"
SCRATCH = 1_000_003  # an odd size, to tell the scratch allocation from I/O buffers


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fake TensorRT + CUDA; ``build_plan`` replaced by one that records the ONNX given to the parser."""
    f: Any = FakeTensorRT().install(monkeypatch)
    f.calls = []

    def build_plan(onnx_path: Path, plan_path: Path, inputs: list[dict[str, Any]], options: te.BuildOptions,
                   timing_cache: Path) -> None:
        f.calls.append({"path": onnx_path, "model": onnx.load(str(onnx_path)), "options": options})
        plan_path.write_bytes(make_plan(str(onnx_path), SCRATCH + 8 * len(f.calls),
                                        version_compatible=options.version_compatible,
                                        exclude_lean_runtime=options.exclude_lean_runtime))

    monkeypatch.setattr(te, "build_plan", build_plan)
    return f


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
        assert te.require_builder().__version__ == version
    else:
        with pytest.raises(NanotrtError, match="too old|newer than"):
            te.require_runtime()


def test_runtime_needs_no_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lean-runtime-only device (tensorrt_lean, no Builder) can run plans; building says what is missing."""
    FakeTensorRT("10.3.0", builder=False, module="tensorrt_lean").install(monkeypatch)
    assert te.require_runtime().__name__ == "tensorrt_lean"
    with pytest.raises(NanotrtError, match="not installed"):
        te.require_builder()


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
    assert te.BuildOptions.from_json(opts) == te.BuildOptions((1, 1), (4, 32), (8, 64), 256)
    calls = len(fake.calls)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "up to date" in res.output
    assert len(fake.calls) == calls


def test_profile_defaults_and_checks(fake: Any, art: Path) -> None:
    max_length = Manifest.load(art).tokenizer["max_length"]
    assert te.BuildOptions().resolve(max_length).max_shape == (32, max_length)  # not 512: scratch sized for it
    with pytest.raises(NanotrtError, match="exceeds the artifact's tokenizer max_length"):
        build(art, backend="tensorrt", trt_options=te.BuildOptions(max_shape=(32, max_length + 1)).to_json())
    with pytest.raises(NanotrtError, match="needs --version-compatible"):
        build(art, backend="tensorrt", trt_options=te.BuildOptions(exclude_lean_runtime=True).to_json())
    with pytest.raises(NanotrtError, match="min <= opt <= max"):
        te.BuildOptions(min_shape=(4, 1), opt_shape=(1, 8), max_shape=(8, 8)).resolve(max_length)
    with pytest.raises(NanotrtError, match="BATCHxSEQ"):
        te.parse_shape("8,128")
    assert fake.calls == []


def test_legacy_calib_cache_is_gone(art: Path) -> None:
    res = CliRunner().invoke(app, ["build", str(art), "--backend", "tensorrt", "--legacy-calib-cache"])
    assert res.exit_code != 0 and "No such option" in res.output


# --- what the strongly typed build parses -------------------------------------------------------------

def _types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def test_strongly_typed_build_parses_the_precision_graph(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt", fp16=True, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for c in fake.calls:
        by_variant.setdefault(c["path"].parent.name.split(".")[1], []).append(c)
    fp32_io = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    for c in by_variant["trt-fp16"]:  # FP16 weights, FP32 I/O, LayerNorm kept FP32
        g = c["model"].graph
        assert onnx.TensorProto.FLOAT16 in _types(c["model"])
        assert {i.type.tensor_type.elem_type for i in [*g.input, *g.output]} <= fp32_io
        producer = {o: n for n in g.node for o in n.output}
        for n in g.node:
            if n.op_type == "LayerNormalization":  # its data input is cast up to FP32
                cast = producer[n.input[0]]
                assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    int8 = [c for c in by_variant["trt-int8"] if any(n.op_type == "QuantizeLinear" for n in c["model"].graph.node)]
    sched = m.schedule()
    assert {c["path"].name for c in int8} == {f"{u}.qdq.onnx" for u in sched.layers + sched.ramps}
    for name in m.schedule("trt-int8").names():
        e = m.graphs[name]
        assert e["format"] == "trt-plan" and e["scratch_bytes"] > SCRATCH and "out:" + e["outputs"][0]["name"] in e["io_bytes"]
        assert e["rel_error"] < 0.15  # measured: the fake runs the parsed ONNX, so this is the real graph error
        src = (m.root / e["file"]).parent / e["source_onnx"]
        assert src.is_file(), "gpu_check compares each plan with ORT on this ONNX"
    assert m.graphs[m.schedule("trt-int8").embeddings]["precision"] == "fp16"  # nothing to quantize
    assert {m.graphs[n]["precision"] for n in m.schedule("trt-int8").layers} == {"int8"}
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

    monkeypatch.setattr(te, "plan_error", error)
    build(art, backend="tensorrt", int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    prec = {m.graphs[n]["index"]: m.graphs[n]["precision"] for n in m.schedule("trt-int8").layers}
    assert prec == {0: "fp16", 1: "fp32", 2: "int8"}
    info = m.data["variants"]["trt-int8"]
    assert set(info["kept_higher"]) == {"embeddings", "layer_00", "layer_01"}
    assert m.graphs["trt-int8/layer_01"]["source_onnx"].endswith("graphs/layer_01.onnx")
    vdir = art / info["dir"]
    assert sorted(p.name.split(".", 1)[1] for p in vdir.glob("layer_0*.*onnx")) == ["fp16.onnx", "qdq.onnx"]


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
    opts = te.BuildOptions(opt_shape=(2, 16), max_shape=(8, 64), workspace_mb=64).resolve(128)
    te.build_plan(m.path("layer_00"), tmp_path / "x.plan", entry["inputs"], opts, tmp_path / "t.cache")
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
    opts = te.BuildOptions(version_compatible=True, exclude_lean_runtime=True).to_json()
    monkeypatch.setenv(te.LEAN_RUNTIME_ENV, "/opt/trt/libnvinfer_lean.so.10")  # the build reads its plans too
    build(art, backend="tensorrt", trt_options=opts)
    monkeypatch.delenv(te.LEAN_RUNTIME_ENV)
    with pytest.raises(NanotrtError, match=te.LEAN_RUNTIME_ENV):
        Runner.from_artifact(art, backend="tensorrt").predict(["x"])
    monkeypatch.setenv(te.LEAN_RUNTIME_ENV, "/opt/trt/libnvinfer_lean.so.10")
    with Runner.from_artifact(art, backend="tensorrt") as r:
        r.predict(["x"])
    assert fake.loaded_runtimes and set(fake.loaded_runtimes) == {"/opt/trt/libnvinfer_lean.so.10"}
    assert all(rt.engine_host_code_allowed for rt in fake.runtimes if rt.lean_path)


def test_version_compatible_plans_allow_host_code(fake: Any, art: Path) -> None:
    build(art, backend="tensorrt", trt_options=te.BuildOptions(version_compatible=True).to_json())
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setattr(sys, "path", sys.path)
    import gpu_check

    build(art, backend="tensorrt", fp16=True, trt_options=te.BuildOptions(max_shape=(8, 16)).to_json())
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(art), "--out", str(tmp_path / "out")])
    assert gpu_check.main() == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    plans = report["variants"]["trt-fp16"]["plans"]
    assert set(next(iter(plans.values()))["rel_error_vs_ort"]) == {"1x1", "1x16", "8x1", "8x16"}  # within 8x16
    assert report["variants"]["trt-fp16"]["runner"]["prefetch_on"]["loads"] > 0
    assert "PASS" in (tmp_path / "out" / "gpu_check.md").read_text()
