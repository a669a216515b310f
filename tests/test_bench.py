"""`nanotrt bench`: rows on the same inputs, report files, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nanotrt.pipeline.benchreport import run_bench
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


def test_bench_rows_and_report(bench_art: Path, tmp_path: Path) -> None:
    rep = run_bench("cola", bench_art, exit="patience=1", budget="1layer", out=tmp_path, limit=12,
                    data_dir=str(FIX), sweep=True)
    res = rep["results"]["cola"]
    names = [r["row"] for r in res["rows"]]
    assert names[0].startswith("1 torch") and any("int8" in n for n in names)
    full = {r["row"][:1]: r for r in res["rows"]}
    # rows 1, 3 and 4 compute the same full-depth model on the same inputs: same metric
    assert full["1"]["metric"] == pytest.approx(full["3"]["metric"]) == pytest.approx(full["4"]["metric"])
    # the torch reference loop and the runner make the same exit decisions
    exit_rows = [r for r in res["rows"] if "patience=1" in r["row"] and "int8" not in r["row"]]
    assert exit_rows[0]["avg_exit_layer"] == pytest.approx(exit_rows[1]["avg_exit_layer"])
    assert not any(r["torch_imported"] for r in res["rows"] if r["row"][0] in "345")
    assert res["sweeps"]["ort-fp32"] and res["sweeps"]["ort-int8"]
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"bench-cola.{ext}").is_file()
    assert json.loads((tmp_path / "bench-cola.json").read_text())["machine"]["cores"]


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
    assert [r["row"][0] for r in res["rows"]] == ["4", "5", "5", "6", "7", "7"]
    assert res["reference"].startswith("4 nanotrt full")
    skipped = {s["row"][0]: s["enable"] for s in res["skipped"]}
    assert "--whole" in skipped["3"] and "--torch-reference" in skipped["1"] and "--fused" in skipped["4"]
    assert "Skipped" in (tmp_path / "bench-cola.md").read_text()
