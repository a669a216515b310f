"""GLUE readers and metrics on fixtures; off-ramp training on a tiny model for both methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nanotrt.pipeline.glue import (
    TASKS,
    compute_metrics,
    f1_score,
    get_task,
    label_names,
    matthews_corrcoef,
    read_split,
)
from nanotrt.runtime.errors import NanotrtError

FIX = Path(__file__).parent / "fixtures" / "glue"


def test_mnli_matched_and_mismatched() -> None:
    tr = read_split("mnli", "train", FIX)
    assert len(tr) == 4 and tr.skipped == 1  # the truncated line
    assert tr.texts[3] == 'He said "yes'  # QUOTE_NONE keeps the stray quote
    assert tr.labels.tolist() == [2, 1, 1, 0]  # neutral, entailment, entailment, contradiction
    m = read_split("mnli", "dev", FIX)
    assert len(m) == 3 and m.skipped == 1  # gold label "-"
    mm = read_split("mnli-mm", "dev", FIX)
    assert len(mm) == 2 and mm.pairs is not None and mm.labels.tolist() == [0, 0]


def test_qqp_skips_malformed_lines() -> None:
    s = read_split("qqp", "train", FIX)
    assert len(s) == 4 and s.skipped == 1
    assert s.pairs is not None and s.pairs[1] == "How do you control your horniness?"


def test_mrpc_bom_and_rte() -> None:
    s = read_split("mrpc", "train", FIX)
    assert s.labels.tolist() == [1, 0] and s.texts[0].startswith("Amrozi")
    r = read_split("rte", "dev", FIX)
    assert r.labels.tolist() == [1, 0]


def test_real_glue_files_on_this_machine() -> None:
    cola = read_split("cola", "dev")
    assert len(cola) == 1043 and set(cola.labels.tolist()) == {0, 1}
    sts = read_split("stsb", "dev")
    assert len(sts) == 1500 and sts.labels.dtype == np.float32 and sts.pairs is not None
    sst = read_split("sst2", "dev")
    assert len(sst) == 872
    assert len(read_split("qnli", "dev")) == 5463


def test_missing_task_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(NanotrtError) as err:
        read_split("mnli", "dev", tmp_path)
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):  # every file, each by its full path
        assert str(tmp_path / "MNLI" / name) in str(err.value), str(err.value)
    with pytest.raises(NanotrtError, match="unknown task"):
        get_task("imagenet")


def test_metrics() -> None:
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([1, 0, 0, 1, 1])
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert matthews_corrcoef(y, np.ones_like(y)) == 0.0
    assert f1_score(y, p) == pytest.approx(2 / 3)
    assert compute_metrics(get_task("mrpc"), y, p)["accuracy"] == pytest.approx(0.6)
    r = compute_metrics(get_task("stsb"), np.array([0.0, 1, 2, 3]), np.array([0.1, 0.9, 2.5, 2.9]))
    assert r["pearson"] > 0.9 and r["spearman"] == pytest.approx(1.0)


def test_two_metric_tasks_lead_with_glues_main_metric() -> None:
    """GLUE scores MRPC and QQP by F1 and accuracy, STS-B by Pearson and Spearman; the first is the one
    exit-vs-full comparisons use (``main_metric``)."""
    y, p = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    for name in ("mrpc", "qqp"):
        assert list(compute_metrics(get_task(name), y, p)) == ["f1", "accuracy"]
        assert get_task(name).main_metric == "f1"
    assert get_task("stsb").metrics == ("pearson", "spearman") and get_task("cola").metrics == ("mcc",)


def test_label_names() -> None:
    assert get_task("cola").label_names == ("unacceptable", "acceptable")
    assert get_task("sst2").label_names == ("negative", "positive")
    assert get_task("mrpc").label_names == ("not_equivalent", "equivalent")
    assert get_task("qqp").label_names == ("not_duplicate", "duplicate")
    assert get_task("rte").label_names == get_task("qnli").label_names == ("entailment", "not_entailment")
    # MNLI's names are the file's values, in class-id order
    assert read_split("mnli", "train", FIX).labels.tolist() == [2, 1, 1, 0]  # neutral, entailment, entailment, ...
    assert get_task("mnli").label_names == ("contradiction", "entailment", "neutral")
    assert get_task("stsb").label_names == ("score",)
    assert all(len(t.label_names) == t.num_labels for t in TASKS.values())
    assert label_names("sst2", ["0", "1"]) == ["negative", "positive"]  # checkpoint trained before names existed
    assert label_names("sst2", ["neg", "pos"]) == ["neg", "pos"]
    assert label_names(None, ["LABEL_0", "LABEL_1"]) == ["LABEL_0", "LABEL_1"]  # a user's own id2label
    assert label_names("stsb", ["score"]) == ["score"]


def test_hf_checkpoint_keeps_its_id2label(tmp_path: Path) -> None:
    from nanotrt.pipeline.export import export_model
    from nanotrt.runtime.artifact import Manifest
    from tinymodels import make_tiny

    d = make_tiny("bert", tmp_path / "hf", layers=1)
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "NEGATIVE", "1": "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    (d / "config.json").write_text(json.dumps(cfg))
    export_model(d, tmp_path / "art", check=False)
    assert Manifest.load(tmp_path / "art").labels == ["NEGATIVE", "POSITIVE"]


def test_ramp_table_shows_every_metric_and_names_the_main_one(capsys: pytest.CaptureFixture[str]) -> None:
    from nanotrt.pipeline.train import print_ramp_table

    print_ramp_table({"task": "mrpc", "metric": "f1", "train_seconds": 1.0,
                      "ramps": [{"layer": 1, "f1": 0.812, "accuracy": 0.705}, {"layer": 2, "f1": 0.9, "accuracy": 0.8}]})
    out = capsys.readouterr().out
    assert "f1 (main)" in out and "accuracy" in out and "81.20" in out and "70.50" in out


@pytest.mark.parametrize("method", ["pabee", "deebert"])
def test_training_lowers_loss_and_round_trips(method: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.train import TrainConfig, train
    from nanotrt.runtime.runner import Runner

    cfg = TrainConfig(task="cola", method=method, epochs=4, batch_size=16, lr=2e-3, data_dir=str(FIX), seed=0)
    report = train(tiny_dirs["bert"], tmp_path / "ckpt", cfg)
    assert report["loss_last"] < report["loss_first"]
    assert len(report["ramps"]) == 3 and "mcc" in report["ramps"][0] and report["metrics"] == ["mcc"]
    saved = json.loads((tmp_path / "ckpt" / "ramp_metrics.json").read_text())
    assert saved["ramps"] == report["ramps"]
    art = export_model(tmp_path / "ckpt", tmp_path / "art").root  # export checks parity itself
    with Runner.from_artifact(art) as r:
        assert r.manifest.task == "cola" and r.labels == ["unacceptable", "acceptable"]
        assert r.predict(["a sentence"]).predictions[0].label in ("unacceptable", "acceptable")


def test_same_seed_same_result(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from nanotrt.pipeline.train import TrainConfig, train

    cfg = TrainConfig(task="cola", epochs=1, batch_size=16, lr=1e-3, data_dir=str(FIX), seed=7, limit=32)
    a = train(tiny_dirs["bert"], tmp_path / "a", cfg)
    b = train(tiny_dirs["bert"], tmp_path / "b", cfg)
    assert a["loss_last"] == b["loss_last"] and a["ramps"] == b["ramps"]


def test_regression_training(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from nanotrt.pipeline.train import TrainConfig, train

    cfg = TrainConfig(task="stsb", epochs=3, batch_size=16, lr=2e-3, data_dir=str(FIX), seed=0)
    report = train(tiny_dirs["distilbert"], tmp_path / "ckpt", cfg)
    assert report["loss_last"] < report["loss_first"]
    assert {"pearson", "spearman"} <= set(report["ramps"][-1])


def test_interrupted_training_leaves_no_checkpoint(tiny_dirs: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.train as tr

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "evaluate_ramps", boom)
    with pytest.raises(KeyboardInterrupt):
        tr.train(tiny_dirs["bert"], tmp_path / "ckpt", tr.TrainConfig(task="cola", epochs=1, data_dir=str(FIX)))
    assert not (tmp_path / "ckpt").exists()
