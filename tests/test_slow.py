"""Checks on the real MiniLM-L6 weights from the `demo` extra (pytest -m slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAIRS, TEXTS

pytestmark = pytest.mark.slow


def test_real_minilm_exports_with_parity(tmp_path: Path) -> None:
    from nanotrt.pipeline.demo import demo_model_dir
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model
    from nanotrt.runtime.runner import Runner

    src = demo_model_dir()
    model = load_model(src, num_labels=2)
    assert model.cfg.pooling == "mean"  # read from the sentence-transformers pooling config
    art = export_model(src, tmp_path / "art", model=model).root
    with Runner.from_artifact(art, memory_budget="2layers") as r:
        res = r.predict(TEXTS, PAIRS, batch_size=3)
        enc = r.tokenizer(TEXTS, PAIRS)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    ref_np = np.stack([lg.numpy() for lg in ref], axis=1)
    assert np.abs(res.ramp_logits - ref_np).max() <= 1e-4


@pytest.mark.parametrize("task", ["stsb", "mrpc"])
def test_bench_runs_the_whole_flow_for_any_task(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nanotrt bench --task T` on any GLUE task whose files are there (regression, sentence pairs): train with a
    held-out slice, export, build, calibrate, plan, bench — no per-task code."""
    from nanotrt.pipeline.benchreport import run_bench

    monkeypatch.setenv("NANOTRT_CACHE", str(tmp_path / "cache"))
    fix = str(Path(__file__).parent / "fixtures" / "glue")
    rep = run_bench(task, data_dir=fix, limit=8, out=tmp_path)
    rows = {r["key"]: r for r in rep["results"][task]["rows"]}
    assert rows["exit-fp32"]["variant"] == "ort-fp32-plan" and rows["plan-noexit"]["exit"] == "none"
    assert rows["exit-fp32"]["vs_ort"] is not None and rep["results"][task]["rows"][0]["key"] == "torch-full"
    assert (tmp_path / f"bench-{task}.md").is_file()
