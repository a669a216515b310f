"""Export: per-graph parity with PyTorch (padded batches, sentence pairs), manifest, atomicity, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import PAIRS, TEXTS, interrupt_on_call
from nanotrt.engines.onnxruntime import session_options
from nanotrt.pipeline.model import load_model
from nanotrt.runtime.artifact import FORMAT_VERSION, Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.tokenize import Tokenizer

ATOL = 1e-4  # fp32 ORT vs PyTorch eager, max abs diff


def _sess(manifest: Manifest, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(manifest.path(name)), session_options(ort), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feeds[k] for k in names})[0]


def _encode(manifest: Manifest, texts: list[str], pairs: list[str] | None) -> dict[str, np.ndarray]:
    return Tokenizer.from_manifest(manifest)(texts, pairs)


@pytest.mark.parametrize("with_pairs", [False, True])
def test_every_graph_matches_pytorch(family: str, artifacts: dict[str, Path], with_pairs: bool) -> None:
    art = artifacts[family]
    m = Manifest.load(art)
    model = load_model(art / "checkpoint")
    enc = _encode(m, TEXTS, PAIRS if with_pairs else None)
    assert (enc["attention_mask"] == 0).any(), "test needs a padded batch"
    if with_pairs and family in ("bert", "albert"):
        assert (enc["token_type_ids"] == 1).any(), "pairs must produce token types"
    ids, mask, types = (torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        logits_ref, hid_ref = model(ids, mask, types, return_hidden=True)
        # our layer-by-layer loop equals the HF model's own forward on the real tokens
        kw = {"token_type_ids": types} if model.adapter.has_token_types else {}
        hf = model.encoder(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
    real = enc["attention_mask"].astype(bool)
    assert np.abs(hf.numpy() - hid_ref[-1].numpy())[real].max() <= ATOL

    table = np.load(m.path("word_embeddings"))
    feeds = {**enc, "inputs_embeds": table[enc["input_ids"]]}
    sched = m.schedule("fp32")
    h = _run(_sess(m, sched.embeddings), feeds)
    assert np.abs(h - hid_ref[0].numpy()).max() <= ATOL
    for i, (lay, ramp) in enumerate(zip(sched.layers, sched.ramps, strict=True)):
        # each graph on the *reference* input, so errors cannot hide by compounding
        out = _run(_sess(m, lay), {"hidden_states": hid_ref[i].numpy(), "attention_mask": enc["attention_mask"]})
        assert np.abs(out - hid_ref[i + 1].numpy()).max() <= ATOL, f"{lay}"
        lg = _run(_sess(m, ramp), {"hidden_states": hid_ref[i + 1].numpy(), "attention_mask": enc["attention_mask"]})
        assert np.abs(lg - logits_ref[i].numpy()).max() <= ATOL, f"{ramp}"
        h = _run(_sess(m, lay), {"hidden_states": h, "attention_mask": enc["attention_mask"]})
    end = _run(_sess(m, sched.ramps[-1]), {"hidden_states": h, "attention_mask": enc["attention_mask"]})
    assert np.abs(end - logits_ref[-1].numpy()).max() <= ATOL  # end to end through ONNX only


def test_padding_does_not_change_real_tokens(family: str, artifacts: dict[str, Path]) -> None:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(artifacts[family]) as r:
        batched = r.predict(TEXTS, PAIRS, batch_size=3)
        single = [r.predict([t], [p]).ramp_logits[0] for t, p in zip(TEXTS, PAIRS, strict=True)]
    np.testing.assert_allclose(batched.ramp_logits, np.stack(single), atol=ATOL)


def test_tokenizer_json_matches_transformers(family: str, artifacts: dict[str, Path], tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    m = Manifest.load(artifacts[family])
    ours = _encode(m, TEXTS, PAIRS)
    hf = AutoTokenizer.from_pretrained(str(tiny_dirs[family]))(TEXTS, PAIRS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], hf["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], hf["attention_mask"])


def test_manifest_contents(artifacts: dict[str, Path]) -> None:
    m = Manifest.load(artifacts["bert"])
    assert m.data["format_version"] == FORMAT_VERSION and m.family == "bert" and m.num_layers == 3
    assert m.labels and m.task_type == "classification"
    for name in m.schedule().names():
        e = m.graphs[name]
        assert {"file", "sha256", "bytes", "inputs", "outputs", "precision"} <= set(e)
        assert m.verify(name) == m.path(name)
        dims = e["inputs"][0]["shape"]
        assert dims[0] == "batch" and dims[1] == "seq"  # dynamic axes
    assert (artifacts["bert"] / "tokenizer" / "tokenizer.json").is_file()


def test_albert_writes_one_shared_layer_graph(artifacts: dict[str, Path]) -> None:
    m = Manifest.load(artifacts["albert"])
    sched = m.schedule()
    assert len(sched.layers) == 3 and len(set(sched.layers)) == 1
    assert len(list((artifacts["albert"] / "graphs").glob("layer_*.onnx"))) == 1


def test_polygraphy_and_checker_pass(artifacts: dict[str, Path]) -> None:
    from nanotrt.pipeline.export import check_graph

    m = Manifest.load(artifacts["distilbert"])
    for name in m.schedule().names():
        check_graph(m.path(name), vocab_size=30522)


def test_interrupted_export_leaves_nothing(tiny_dirs: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.export as ex

    interrupt_on_call(monkeypatch, ex, "_export_one")
    with pytest.raises(KeyboardInterrupt):
        ex.export_model(tiny_dirs["bert"], tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_regression_model_exports(tmp_path: Path) -> None:
    from nanotrt.pipeline.export import export_model
    from nanotrt.runtime.runner import Runner
    from tinymodels import make_tiny

    d = make_tiny("bert", tmp_path / "m", num_labels=1, layers=2)
    art = export_model(d, tmp_path / "art").root
    with Runner.from_artifact(art) as r:
        res = r.predict(TEXTS, PAIRS)
    assert r.manifest.task_type == "regression" and res.logits.shape == (3, 1)


# --- bad input: one line, non-zero exit, no traceback -----------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nanotrt", *args], capture_output=True, text=True, timeout=300)


def _assert_clean_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_cli_export_bad_inputs(tmp_path: Path) -> None:
    _assert_clean_error(_cli("export", str(tmp_path / "missing"), "-o", str(tmp_path / "o")), "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_clean_error(_cli("export", str(tmp_path / "empty"), "-o", str(tmp_path / "o")), "no config.json")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _assert_clean_error(_cli("export", str(tmp_path / "gpt"), "-o", str(tmp_path / "o")), "unsupported model_type")
    assert not (tmp_path / "o").exists()


def test_cli_predict_bad_artifacts(artifacts: dict[str, Path], tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    ok = _cli("predict", str(art), "a fine sentence", "--pair", "and a second")
    assert ok.returncode == 0 and "exit@3/3" in ok.stdout, ok.stderr

    layer = art / "graphs" / "layer_01.onnx"
    layer.write_bytes(layer.read_bytes()[: layer.stat().st_size // 2])  # truncated
    _assert_clean_error(_cli("predict", str(art), "text"), "sha256")

    man = json.loads((art / "manifest.json").read_text())
    man["graphs"]["layer_01"]["sha256"] = __import__("hashlib").sha256(layer.read_bytes()).hexdigest()
    man["graphs"]["layer_01"]["bytes"] = layer.stat().st_size
    (art / "manifest.json").write_text(json.dumps(man))
    _assert_clean_error(_cli("predict", str(art), "text"), "cannot load")  # corrupted but "consistent"

    man["format_version"] = 99
    (art / "manifest.json").write_text(json.dumps(man))
    _assert_clean_error(_cli("predict", str(art), "text"), "format version 99")


def test_non_local_model_name_is_an_error() -> None:
    with pytest.raises(NanotrtError, match="never downloads"):
        load_model("bert-base-uncased")
