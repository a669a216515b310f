"""`nanotrt build`: FP16 / INT8 variants within tolerance, train-only calibration, atomic and idempotent
builds, manifest integrity; the TensorRT path skips cleanly without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PAIRS, TEXTS, interrupt_on_call
from nanotrt.engines.onnxruntime import session_options
from nanotrt.pipeline.build import build
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner

FIX = Path(__file__).parent / "fixtures" / "glue"
SENTS = TEXTS + ["the cat sat on the mat", "colourless green ideas sleep furiously", "he did n't went home"]
FP16_ATOL = 2e-2  # fp16 weights and activations (CPU EP), logits of a tiny random model
INT8_REL = 0.15  # relative L2 error of all ramp logits, static QDQ calibrated on 32 sentences


@pytest.fixture(scope="module")
def built(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    art = tmp_path_factory.mktemp("built") / "art"
    shutil.copytree(artifacts["bert"], art)
    build(art, fp16=True, int8=True, calib_task="cola", calib_size=32, data_dir=FIX, dynamic=True)
    return art


def _logits(art: Path, variant: str) -> np.ndarray:
    with Runner.from_artifact(art, variant=variant) as r:
        return r.predict(SENTS, batch_size=3).ramp_logits


def test_variants_within_tolerance(built: Path) -> None:
    ref = _logits(built, "fp32")
    np.testing.assert_allclose(_logits(built, "ort-fp32"), ref, atol=1e-4)  # fusions only
    np.testing.assert_allclose(_logits(built, "ort-fp16"), ref, atol=FP16_ATOL)
    for v in ("ort-int8", "ort-int8-dynamic"):
        q = _logits(built, v)
        assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < INT8_REL, v


def test_precision_selects_variant(built: Path) -> None:
    with Runner.from_artifact(built, precision="int8") as r:
        assert r.variant == "ort-int8"
        assert all(r.manifest.graphs[n]["precision"] in ("int8", "fp32") for n in r.schedule.names())


def test_default_runner_uses_the_best_variant(built: Path, artifacts: dict[str, Path]) -> None:
    """Built before exported, at the requested precision; ``variant`` overrides; stats name what ran."""
    with Runner.from_artifact(artifacts["bert"]) as r:  # exported only
        assert r.variant == "fp32" and r.predict(["a text"]).stats.variant == "fp32"
    with Runner.from_artifact(built, memory_budget="2layers") as r:
        assert r.variant == "ort-fp32" and r.predict(["a text"]).stats.variant == "ort-fp32"
    with Runner.from_artifact(built, precision="fp16") as r:
        assert r.variant == "ort-fp16"
    with Runner.from_artifact(built, variant="fp32") as r:
        assert r.variant == "fp32" and r.predict(["a text"]).stats.variant == "fp32"
    with pytest.raises(NanotrtError, match=r"no int8 variant for onnxruntime.*nanotrt build .* --int8"):
        Runner.from_artifact(artifacts["bert"], precision="int8")
    with pytest.raises(NanotrtError, match="unknown precision 'int4'"):
        Runner.from_artifact(built, precision="int4")


def test_variant_preference_rule(built: Path) -> None:
    m = Manifest.load(built)
    assert m.variant_choices("int8") == ["ort-int8", "ort-int8-dynamic"]  # static (calibrated) first
    assert m.best_variant("fp32", "torch") == "fp32"  # the eager reference runs the checkpoint
    del m.data["variants"]["ort-int8"]  # in memory only
    assert m.best_variant("int8") == "ort-int8-dynamic"
    with pytest.raises(NanotrtError, match="--backend tensorrt --fp16"):
        m.best_variant("fp16", "tensorrt")
    with pytest.raises(NanotrtError, match="backend 'torch' does not run int8"):
        m.best_variant("int8", "torch")


def test_cli_predict_stats_name_the_variant(built: Path) -> None:
    def predict(*extra: str) -> tuple[str, dict[str, object]]:
        p = subprocess.run([sys.executable, "-m", "nanotrt", "predict", str(built), "a text", "--stats", *extra],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout, json.loads(p.stderr[p.stderr.index("{"):])

    out, stats = predict()
    assert stats["variant"] == "ort-fp32"
    assert out.split("\t")[0] in ("LABEL_0", "LABEL_1")  # the HF checkpoint's own id2label
    assert predict("--variant", "fp32")[1]["variant"] == "fp32"
    assert predict("--precision", "int8")[1]["variant"] == "ort-int8"


def test_manifest_integrity_after_build(built: Path) -> None:
    m = Manifest.load(built)
    assert {"fp32", "ort-fp32", "ort-fp16", "ort-int8", "ort-int8-dynamic"} <= set(m.variants)
    for v in m.variants:
        for name in m.schedule(v).names():
            m.verify(name)
    info = m.data["variants"]["ort-int8"]
    assert set(info["rel_error"]) == set(m.schedule("fp32").names()) - {"word_embeddings"}
    assert info["options"]["calib_task"] == "cola"
    leftovers = [p.name for p in built.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_rebuild_is_idempotent(built: Path) -> None:
    before = (built / "manifest.json").read_text()
    dirs = sorted(p.name for p in built.iterdir())
    build(built, fp16=True, int8=True, calib_task="cola", calib_size=32, data_dir=FIX, dynamic=True)
    assert (built / "manifest.json").read_text() == before
    assert sorted(p.name for p in built.iterdir()) == dirs


def test_calibration_reads_train_split_only(artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    import nanotrt.calibration.readers as cr
    import nanotrt.pipeline.glue as glue

    seen: list[str] = []
    real = glue.read_split

    def spy(task: str, split: str = "dev", *a: object, **k: object) -> object:
        seen.append(split)
        return real(task, split, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(glue, "read_split", spy)
    sets: list[cr.CalibrationSet] = []
    real_collect = cr.collect
    monkeypatch.setattr(cr, "collect", lambda *a, **k: sets.append(real_collect(*a, **k)) or sets[-1])
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    build(art, int8=True, calib_task="cola", calib_size=8, data_dir=FIX)
    assert seen == ["train"]
    m = Manifest.load(art)
    sched = m.schedule()
    # layer i is calibrated on what the FP32 prefix produces: ramp i's input is layer i's output
    assert sets[0].batches(sched.layers[1])[0]["hidden_states"].shape[-1] == m.data["hidden_size"]
    assert sum(len(b["input_ids"]) for b in sets[0].batches(sched.embeddings)) == 8


def test_interrupted_build_leaves_previous_artifact(artifacts: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.calibration.quantize as q

    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    before = (art / "manifest.json").read_text()
    interrupt_on_call(monkeypatch, q, "quantize_static_qdq")
    with pytest.raises(KeyboardInterrupt):
        build(art, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    m = Manifest.load(art)
    assert "ort-int8" not in m.variants  # the optimized FP32 variant finished before the interrupt
    old = json.loads(before)
    for v in old["variants"]:
        assert m.data["variants"][v] == old["variants"][v]
        for name in m.schedule(v).names():
            m.verify(name)
    assert not [p for p in art.iterdir() if "int8" in p.name or p.name.startswith(".")]
    with Runner.from_artifact(art) as r:  # still runs
        r.predict(TEXTS, PAIRS)


def test_int8_without_task_is_an_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    with pytest.raises(NanotrtError, match="--calib-task"):
        build(art, int8=True)
    with pytest.raises(NanotrtError, match="GLUE mnli train split not found"):
        build(art, int8=True, calib_task="mnli", data_dir=tmp_path)
    assert json.loads((art / "manifest.json").read_text())["variants"].keys() == {"fp32"}


def test_tensorrt_without_tensorrt_is_a_clear_error(artifacts: dict[str, Path]) -> None:
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(NanotrtError, match="TensorRT is not installed"):
        build(artifacts["bert"], backend="tensorrt", fp16=True)


def test_tensorrt_matches_onnxruntime(artifacts: dict[str, Path], tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder"):
        pytest.skip("TensorRT builder not installed (only stubs/lean runtime)")
    pytest.importorskip("cuda")
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    build(art, backend="tensorrt", fp16=True)
    ref = _logits(art, "fp32")
    with Runner.from_artifact(art, backend="tensorrt", precision="fp16") as r:
        got = r.predict(SENTS, batch_size=3).ramp_logits
    np.testing.assert_allclose(got, ref, atol=FP16_ATOL)


def test_dynamic_int8_alone_needs_no_calibration(artifacts: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.calibration.readers as cr

    monkeypatch.setattr(cr, "collect", lambda *a, **k: pytest.fail("dynamic INT8 must not read calibration data"))
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    assert build(art, dynamic=True, data_dir=tmp_path) == ["ort-fp32", "ort-int8-dynamic"]
    m = Manifest.load(art)
    assert "ort-int8" not in m.variants and "rel_error" not in m.data["variants"]["ort-int8-dynamic"]
    assert any(m.graphs[n]["precision"] == "int8" for n in m.schedule("ort-int8-dynamic").layers)
    ref, q = _logits(art, "fp32"), _logits(art, "ort-int8-dynamic")
    assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < INT8_REL


def test_dynamic_int8_quantizes_weights_shared_through_identity_nodes(tmp_path: Path) -> None:
    """ALBERT's exporter feeds layers 2..N their shared weights through Identity nodes; the one-graph
    dynamic INT8 baseline must quantize those MatMuls too, not only layer 1's."""
    import onnx
    import onnxruntime as ort
    from nanotrt.calibration.quantize import quantize_dynamic_int8
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Identity", ["w"], ["w_shared"]),
             helper.make_node("MatMul", ["h", "w_shared"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert quantize_dynamic_int8(src, dst)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("MatMulInteger") == 2 and "Identity" not in ops and "MatMul" not in ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.onnx", "src.onnx"]  # no temp file left
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    ref, got = (ort.InferenceSession(str(p), session_options(ort)).run(None, {"x": x})[0] for p in (src, dst))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
