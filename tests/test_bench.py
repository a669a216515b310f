"""`nanotrt bench`: rows on the same inputs, report files, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from nanotrt.pipeline.benchreport import run_bench
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError

FIX = Path(__file__).parent / "fixtures" / "glue"


@pytest.fixture(scope="module")
def bench_art(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model, save_checkpoint

    root = tmp_path_factory.mktemp("bench")
    m = load_model(tiny_dirs["bert"], task="cola", labels=["0", "1"])
    save_checkpoint(m, root / "ckpt", tokenizer_src=tiny_dirs["bert"])
    art = export_model(root / "ckpt", root / "art", whole=True).root
    build(art, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    return art


def test_whole_graph_int8_baseline_is_built(bench_art: Path) -> None:
    """`build --int8` also puts the one graph through ORT's quantize_dynamic (per-channel), atomically and
    once; its error against the FP32 one graph is recorded."""
    from nanotrt.pipeline.build import WHOLE_INT8, build

    m = Manifest.load(bench_art)
    entry = m.graphs[WHOLE_INT8]
    assert entry["precision"] == "int8" and entry["options"]["per_channel"] and entry["rel_error"] < 0.15
    m.verify(WHOLE_INT8)
    ops = {n.op_type for n in onnx.load(str(m.path(WHOLE_INT8))).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    before = (bench_art / "manifest.json").read_text()
    build(bench_art, int8=True, calib_task="cola", calib_size=16, data_dir=FIX)
    assert (bench_art / "manifest.json").read_text() == before  # cached


def test_bench_rows_and_report(bench_art: Path, tmp_path: Path) -> None:
    # QQP: a task GLUE scores with two metrics (F1 first, then accuracy)
    rep = run_bench("qqp", bench_art, exit="patience=1", budget="1layer", out=tmp_path, data_dir=str(FIX), sweep=True)
    res = rep["results"]["qqp"]
    rows = {r["key"]: r for r in res["rows"]}
    assert res["metrics"] == ["f1", "accuracy"] and res["metric"] == "f1"
    assert all(set(r["metrics"]) == {"f1", "accuracy"} for r in res["rows"])
    # the same full-depth FP32 model on the same inputs: same metrics
    for key in ("ort-whole", "full"):
        assert rows[key]["metrics"] == pytest.approx(rows["torch-full"]["metrics"])
    # the torch reference loop and the runner make the same exit decisions
    assert rows["torch-exit"]["avg_exit_layer"] == pytest.approx(rows["exit-fp32"]["avg_exit_layer"])
    assert not any(r["torch_imported"] for k, r in rows.items() if not k.startswith("torch"))
    # runner rows run the best variant, as predict does; INT8 rows are held to the dynamic-INT8 one graph
    assert rows["full"]["variant"] == rows["exit-fp32"]["variant"] == "ort-fp32"
    assert rows["exit-int8"]["variant"] == "ort-int8" and rows["ort-whole-int8"]["precision"] == "int8"
    assert all(rows[k]["vs_ort"] is not None for k in ("exit-fp32", "exit-int8", "full"))  # values: add_ratios' test
    assert res["sweeps"]["ort-fp32"] and res["sweeps"]["ort-int8"]
    assert all(p["vs_ort"] is not None for pts in res["sweeps"].values() for p in pts)
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"bench-qqp.{ext}").is_file()
    saved = json.loads((tmp_path / "bench-qqp.json").read_text())
    assert saved["machine"]["cores"] and saved["results"]["qqp"]["metrics"] == ["f1", "accuracy"]
    md = (tmp_path / "bench-qqp.md").read_text()
    assert "exit-vs-full comparisons use f1" in md and "ORT one graph, dynamic INT8" in md
    lines = md.splitlines()
    headers = [line for i, line in enumerate(lines[:-1]) if lines[i + 1].startswith("|---")]
    assert all(line.startswith("|") and line.count("|") == lines[lines.index(line) + 1].count("|") for line in headers)
    assert sum("| f1 | accuracy |" in line for line in headers) == 3  # rows table + 2 sweeps


def test_bench_errors(bench_art: Path, tmp_path: Path) -> None:
    with pytest.raises(NanotrtError, match="unknown task"):
        run_bench("imagenet", bench_art)
    with pytest.raises(NanotrtError, match="MNLI"):
        run_bench("mnli", bench_art, data_dir=str(tmp_path))
    with pytest.raises(NanotrtError, match="labels but stsb"):
        run_bench("stsb", bench_art, data_dir=str(FIX))
    art = tmp_path / "art"
    shutil.copytree(bench_art, art)
    man = json.loads((art / "manifest.json").read_text())
    del man["graphs"]["whole"]
    (art / "manifest.json").write_text(json.dumps(man))
    del man["checkpoint"]
    (art / "manifest.json").write_text(json.dumps(man))
    rep = run_bench("cola", art, data_dir=str(FIX), limit=6, out=tmp_path)  # runs what it can, lists the rest
    res = rep["results"]["cola"]
    assert [r["key"] for r in res["rows"]] == ["full", "exit-fp32-per-layer", "exit-fp32", "exit-int8",
                                               "stream-per-layer", "stream-block", "block-all"]
    by_key = {r["key"]: r for r in res["rows"]}  # block mode answers in the split's order: the same metric
    assert by_key["block-all"]["metrics"] == pytest.approx(by_key["exit-int8"]["metrics"])
    skipped = {s["row"]: s["enable"] for s in res["skipped"]}
    assert "--whole" in skipped["3 ORT one graph"] and "--torch-reference" in skipped["1 torch eager, full"]
    assert "nanotrt plan" in skipped["4 nanotrt full, no-exit plan"]  # its copy of the artifact is not there
    assert "Skipped" in (tmp_path / "bench-cola.md").read_text()
    assert not (tmp_path / "bench-cola.png").exists()  # no sweep: no plot (and none announced)
    shutil.rmtree(art)
    shutil.copytree(bench_art, art)  # built by an older nanotrt: INT8 variants but no INT8 one graph
    man = json.loads((art / "manifest.json").read_text())
    del man["graphs"]["whole-int8-dynamic"]
    (art / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NanotrtError, match="INT8 one-graph baseline: run `nanotrt build .* --int8"):
        run_bench("cola", art, data_dir=str(FIX))


def test_bench_rows_follow_the_artifacts_variants() -> None:
    from nanotrt.pipeline.benchreport import bench_rows

    def manifest(*variants: str) -> Manifest:
        return Manifest(Path("art"), {"variants": dict.fromkeys(variants, {}), "task_type": "classification",
                                      "num_layers": 6, "default_exit": "maxprob=0.8"})

    base = {"artifact": "art", "task": "cola"}
    keys = [r.key for r in bench_rows(None, "all", 1, manifest("fp32", "ort-fp32"), base)]
    assert keys == ["torch-full", "torch-exit", "ort-whole", "full", "plan-noexit", "exit-fp32-per-layer", "exit-fp32",
                    "stream", "stream-per-layer"]
    rows = bench_rows(None, "all", 32, manifest("fp32", "ort-fp32", "ort-fp32-plan", "ort-int8", "ort-int8-dynamic",
                                                "ort-int8-dynamic-plan"), base)
    assert [r.key for r in rows] == [
        "torch-full", "torch-exit", "ort-whole", "ort-whole-int8", "full", "plan-noexit", "exit-fp32-per-layer",
        "exit-fp32", "exit-int8", "plan-noexit-int8-dynamic", "exit-int8-dynamic", "stream", "stream-per-layer", "b-torch-full",
        "b-ort-whole", "b-ort-whole-int8", "b-full", "b-exit-fp32", "b-exit-int8-dynamic"]
    by_key = {r.key: r for r in rows}
    assert by_key["exit-int8"].precision == "int8" and by_key["exit-int8"].variant is None  # the runner's rule
    assert by_key["exit-fp32"].exit == "default" and by_key["torch-exit"].exit == "maxprob=0.8"  # calibrated
    assert by_key["full"].variant == by_key["exit-fp32-per-layer"].variant == "ort-fp32"  # what plans replaced
    assert by_key["exit-int8-dynamic"].variant == "ort-int8-dynamic-plan"
    assert by_key["ort-whole-int8"].graph == by_key["b-ort-whole-int8"].graph == "whole-int8-dynamic"
    assert by_key["stream"].artifact.endswith("artifact-2layers") and by_key["b-ort-whole"].batch_size == 32


def test_cached_demo_artifact_gains_what_is_missing(bench_art: Path, tmp_path: Path) -> None:
    """An artifact cached by an older nanotrt (file label values, no dynamic INT8) is completed in place,
    not re-trained or re-exported."""
    from nanotrt.pipeline.benchreport import prepare_default

    art = tmp_path / "artifact"
    shutil.copytree(bench_art, art)
    man = json.loads((art / "manifest.json").read_text())
    man["labels"] = ["0", "1"]
    (art / "manifest.json").write_text(json.dumps(man))
    assert prepare_default("cola", str(FIX), root=tmp_path) == art
    m = Manifest.load(art)
    assert m.labels == ["unacceptable", "acceptable"] and "ort-int8-dynamic" in m.variants
    assert m.graphs["whole"] == man["graphs"]["whole"]  # not re-exported
    assert all(e == e for e in m.data["variants"]["ort-int8-dynamic"]["rel_error"].values())  # measured, not NaN


def test_vs_ort_pairs_each_row_with_the_one_graph_of_its_precision() -> None:
    """Ratios from known throughputs: FP32 rows against the FP32 one graph, INT8 rows against the dynamic-INT8
    one graph, batched rows against nothing (the one graph runs batch 1), block rows against the one graph."""
    from nanotrt.pipeline.benchreport import add_ratios

    def r(key: str, precision: str, throughput: float, **kw: object) -> dict[str, object]:
        return {"key": key, "precision": precision, "throughput": throughput, **kw}

    rows = [r("torch-full", "fp32", 50.0), r("ort-whole", "fp32", 100.0), r("ort-whole-int8", "int8", 400.0),
            r("exit-fp32", "fp32", 80.0), r("exit-int8", "int8", 300.0),
            r("b-torch-full", "fp32", 200.0, batch_size=8), r("b-exit-int8", "int8", 1000.0, batch_size=8),
            r("block-all", "int8", 200.0, batch_size=8, mode="block")]
    sweep = {"ort-int8": [r("sweep", "int8", 100.0)]}
    add_ratios(rows, sweep)
    got = {x["key"]: (x["vs_ort"], x["wall_speedup"]) for x in rows}
    assert got["exit-fp32"] == (0.8, 1.6) and got["exit-int8"] == (0.75, 6.0)
    assert got["b-exit-int8"] == (None, 5.0)  # batched: against batched eager, no one-graph ratio
    assert got["block-all"] == (0.5, 4.0)
    assert sweep["ort-int8"][0]["vs_ort"] == 0.25
