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
