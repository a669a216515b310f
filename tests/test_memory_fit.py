"""benchmarks/memory_fit.py: the cap verdicts and headline lines, targets, report and chart from rows, and one
real row of each ONNX Runtime kind measured on a tiny model (no timing asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "glue"
_spec = importlib.util.spec_from_file_location("memory_fit", ROOT / "benchmarks" / "memory_fit.py")
assert _spec and _spec.loader
mf = importlib.util.module_from_spec(_spec)
sys.modules["memory_fit"] = mf  # dataclasses look their module up there
_spec.loader.exec_module(mf)

SENTENCES = [f"sentence number {i} is a short line about a film that was rather good" for i in range(30)]


def _row(model: str, row: str, peak_mb: float, ms: float = 10.0, **extra: Any) -> dict[str, Any]:
    kind = "torch" if row.startswith("PyTorch") else "ort" if row.startswith("ORT") else "runner"
    budget = next((b for b in ("all", "4layers", "2layers", "1layer") if row.endswith(b)), "all") if kind == "runner" else None
    return {"model": model, "row": row, "kind": kind, "precision": "int8" if "INT8" in row else "fp32",
            "budget": budget, "peak_rss": peak_mb * 1e6, "rss_imports": 40e6, "rss_loaded": 60e6,
            "latency": {"short": {"p50_ms": ms / 4, "tokens": 24.0}, "long": {"p50_ms": ms, "tokens": 128.0}},
            "held": {"engines": 20e6, "activations": None} if kind == "runner" else {"weights": 100e6, "activations": None},
            "rss_end_breakdown": {"anon": 30e6, "file": 20e6, "top": [["[anon]", 30e6]]}, **extra}


def _models() -> dict[str, dict[str, Any]]:
    info = {"layers": 12, "hidden": 768, "vocab": 30522, "whole_int8_bytes": 1e8, "whole_int8_rel_error": 0.01}
    return {"big": {**info, "label": "Big", "weights_bytes": 1300e6},
            "small": {**info, "label": "Small", "weights_bytes": 260e6}}


ROWS = [
    _row("big", "ORT one graph FP32", 1900, 300), _row("big", "ORT one graph INT8 (dynamic)", 700, 120),
    _row("big", "PyTorch eager FP32", 2100, 900), _row("big", "nanotrt INT8, 2layers", 450, 400),
    _row("big", "nanotrt INT8, 1layer", 300, 600), _row("big", "nanotrt FP32, 1layer", 0.1, 1, error="killed"),
    _row("small", "ORT one graph FP32", 470, 90), _row("small", "nanotrt INT8, all", 230, 30),
    _row("small", "nanotrt INT8, 1layer", 170, 60, accuracy={"task": "cola", "metric": "mcc", "value": 0.2676,
                                                              "metrics": {"mcc": 0.2676, "accuracy": 0.712}}),
]


def test_fits_compares_peak_with_each_cap_and_never_passes_a_failed_row() -> None:
    assert mf.fits(_row("m", "ORT one graph FP32", 512)) == {"256 MB": False, "512 MB": True, "1 GB": True, "2 GB": True}
    assert not any(mf.fits(ROWS[5]).values())  # failed rows report no peak worth trusting


def test_headline_names_the_largest_model_that_fits_each_cap() -> None:
    lines = mf.headline(_models(), ROWS)
    assert len(lines) == len(mf.CAPS)
    # 256 MB: Big's lowest peak is 300 MB (its 0.1 MB row failed), so Small, at its fastest fitting row
    assert lines[0].startswith("**in 256 MB**: Small") and "nanotrt INT8, all" in lines[0]
    assert "Big needs at least 300 MB: nanotrt INT8, 1layer" in lines[0]
    # 512 MB: Big streamed; the fastest row under the cap; the baselines' peaks named
    assert lines[1].startswith("**in 512 MB**: Big") and "nanotrt INT8, 2layers: 400 ms" in lines[1]
    assert "one ORT graph FP32 1900 MB, one ORT graph INT8 700 MB, PyTorch eager 2100 MB" in lines[1]
    assert "ORT one graph INT8 (dynamic): 120 ms" in lines[2]  # 1 GB: the INT8 one graph fits and is fastest
    assert "needs at least" not in lines[3]


def test_headline_when_nothing_fits() -> None:
    rows = [_row("big", "ORT one graph FP32", 3000)]
    assert mf.headline(_models(), rows)[0] == "**in 256 MB**: nothing fits; the lowest peak is Big, ORT one graph FP32: 3000 MB"


def test_targets_are_judged_on_the_named_rows() -> None:
    rows = [_row("bert-base", "nanotrt FP32, 2 layers", 199), _row("bert-base", "nanotrt INT8, 2 layers", 131)]
    got = {(t["model"], t["row"]): t for t in mf.targets(rows)}
    assert got[("bert-base", "nanotrt FP32, 2 layers")]["met"]
    assert not got[("bert-base", "nanotrt INT8, 2 layers")]["met"]
    missing = got[("bert-large", "nanotrt INT8, 2 layers")]
    assert missing["peak_rss"] is None and not missing["met"]


def test_markdown_and_chart(tmp_path: Path) -> None:
    report = {"command": "python benchmarks/memory_fit.py", "date": "now", "examples": 3,
              "machine": {"cpu": "cpu", "cores": 2}, "models": _models(), "rows": ROWS}
    md = mf.markdown(report)
    for r in ROWS:
        assert f"| {r['row']} |" in md
    assert "failed: killed" in md and "random weights" in md
    assert "cola dev mcc 26.76, accuracy 71.2 %" in md
    assert "3.2-3.4 GB" in md and "unified memory" in md
    png = tmp_path / "c.png"
    mf.chart(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_reads_activation_bytes_when_the_runtime_reports_them() -> None:
    assert mf.held_from_stats({"peak_resident_bytes": 5})["activations"] is None
    assert mf.held_from_stats({"peak_resident_bytes": 5, "peak_activation_bytes": 7})["activations"] == 7


@pytest.fixture(scope="module")
def tiny(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.export import export_model

    root = tmp_path_factory.mktemp("memfit")
    art = export_model(tiny_dirs["bert"], root / "art", whole=True, include_checkpoint=False).root
    build(art, dynamic=True)
    q = mf.quantize_whole(art, root / "whole-int8.onnx", SENTENCES[:8])
    return {"artifact": str(art), "whole_int8": str(root / "whole-int8.onnx"), "quant": q, "root": root}


def test_whole_int8_is_checked_and_cached(tiny: dict[str, Any]) -> None:
    assert tiny["quant"]["rel_error_vs_fp32"] < 0.15
    out = Path(tiny["whole_int8"])
    stamp = out.stat().st_mtime_ns
    assert mf.quantize_whole(Path(tiny["artifact"]), out, SENTENCES[:8]) == tiny["quant"]
    assert out.stat().st_mtime_ns == stamp  # not re-quantized


@pytest.mark.parametrize("kind,precision,budget", [("runner", "int8", "2layers"), ("ort", "int8", None)])
def test_measure_row_on_a_tiny_model(tiny: dict[str, Any], kind: str, precision: str, budget: str | None) -> None:
    spec = {"kind": kind, "precision": precision, "budget": budget, "artifact": tiny["artifact"],
            "whole_int8": tiny["whole_int8"], "examples": 2, "task": "cola", "data_dir": str(FIX)}
    r = mf.measure_row(spec, SENTENCES)
    assert 0 < r["rss_imports"] and r["rss_loaded"] <= r["peak_rss"] <= r["peak_rss_with_accuracy_pass"]
    assert r["latency"]["long"]["tokens"] == 128  # the long workload really is 128 tokens
    assert 10 < r["latency"]["short"]["tokens"] < 20 and r["latency"]["short"]["examples"] == 2
    assert r["accuracy"]["examples"] > 0 and "mcc" in r["accuracy"]["metrics"]
    if kind == "runner":
        assert 0 < r["held"]["engines"] <= r["held"]["budget_bytes"]
    else:
        assert r["held"]["weights"] == Path(tiny["whole_int8"]).stat().st_size


def test_bad_model_name_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_fit.py"), "--models", "gpt9",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown model(s) gpt9" in p.stdout + p.stderr
    assert "Traceback" not in p.stderr and not list(tmp_path.iterdir())


def test_shapes_have_their_tokenizers() -> None:
    for name, model in mf.MODELS.items():
        if isinstance(model, mf.RandomShape):
            assert (mf.TOKENIZERS / model.tokenizer).is_dir(), name

