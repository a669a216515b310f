"""Adaptive computation end to end on tiny models: distilled and compute-penalty training, exit heads
through export and the runner, calibrate-exit (train rows only), the device profile and the deadline rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nanotrt.runtime.errors import NanotrtError

FIX = Path(__file__).parent / "fixtures" / "glue"


@pytest.fixture(scope="module")
def halting_ckpt(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from nanotrt.pipeline.train import TrainConfig, train

    out = tmp_path_factory.mktemp("halting") / "ckpt"
    cfg = TrainConfig(task="cola", epochs=6, batch_size=8, lr=2e-3, data_dir=str(FIX), seed=0, distill=True,
                      compute_penalty=0.2, holdout=16)
    return out, train(tiny_dirs["bert"], out, cfg)


@pytest.fixture(scope="module")
def halting_art(halting_ckpt: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanotrt.pipeline.export import export_model

    return export_model(halting_ckpt[0], tmp_path_factory.mktemp("halting_art") / "art").root


def test_distill_and_compute_penalty_training_lowers_the_loss(halting_ckpt: tuple[Path, dict]) -> None:
    _, report = halting_ckpt
    assert report["loss_last"] < report["loss_first"]
    assert report["train_examples"] == 64 - 16  # the held-out rows never reach training
    assert 1 <= report["learned_exit_dev"]["avg_exit_layer"] <= 3


def test_distill_regression_trains_to_the_final_prediction(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from nanotrt.pipeline.train import TrainConfig, distill_losses, train

    final = torch.tensor([[1.0], [2.0]])
    ramp = torch.tensor([[1.5], [2.0]])
    assert distill_losses(_task("stsb"), [ramp, final], 2.0)[0].tolist() == pytest.approx([0.25, 0.0])
    cfg = TrainConfig(task="stsb", epochs=3, batch_size=16, lr=2e-3, data_dir=str(FIX), seed=0, distill=True)
    report = train(tiny_dirs["distilbert"], tmp_path / "ckpt", cfg)
    assert report["loss_last"] < report["loss_first"]


def _task(name: str):  # noqa: ANN202
    from nanotrt.pipeline.glue import get_task

    return get_task(name)


def test_distillation_kl_is_zero_when_ramp_matches_final() -> None:
    from nanotrt.pipeline.train import distill_losses

    z = torch.tensor([[2.0, -1.0], [1.0, -1.5]])
    assert distill_losses(_task("cola"), [z.clone(), z], 2.0)[0].abs().max() < 1e-6
    assert (distill_losses(_task("cola"), [-z, z], 2.0)[0] > 0.1).all()


def test_exit_distribution_sums_to_one_and_last_layer_takes_the_rest() -> None:
    from nanotrt.pipeline.train import exit_distribution

    a = [torch.full((2,), 0.0), torch.full((2,), 0.0), torch.full((2,), -50.0)]  # h = 0.5, 0.5, (forced 1)
    q = exit_distribution(a)
    assert q[0].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert torch.allclose(q.sum(1), torch.ones(2))


def test_exit_head_exports_and_runner_matches_reference(halting_ckpt: tuple[Path, dict], halting_art: Path) -> None:
    from nanotrt.pipeline.model import load_model
    from nanotrt.pipeline.reference import reference_exit
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.exits import parse_exit
    from nanotrt.runtime.runner import Runner

    m = Manifest.load(halting_art)
    assert [o["name"] for o in m.graphs["ramp_00"]["outputs"]] == ["logits", "exit_prob"]
    model = load_model(halting_ckpt[0])
    texts = ["The book was read by me.", "Him went there quickly", "what a day", "She sings."]
    for thr in ("0.3", "0.5", "0.8"):
        with Runner.from_artifact(halting_art, exit=f"learned={thr}") as r:
            res = r.predict(texts, batch_size=2)
            for text, layer in zip(texts, res.exit_layers, strict=True):
                enc = r.tokenizer([text])
                t = {k: torch.from_numpy(v) for k, v in enc.items()}
                _, ref_layer = reference_exit(model, t["input_ids"], t["attention_mask"], t["token_type_ids"],
                                              parse_exit(f"learned={thr}"))
                assert layer == ref_layer


def test_learned_exit_on_an_artifact_without_heads_is_a_clear_error(artifacts: dict[str, Path]) -> None:
    from nanotrt.runtime.runner import Runner

    with pytest.raises(NanotrtError, match="exit_prob.*compute-penalty"):
        Runner.from_artifact(artifacts["bert"], exit="learned=0.5")
    with pytest.raises(NanotrtError, match="1..2"):
        Runner.from_artifact(artifacts["bert"], exit="patience=3")  # 3 layers: patience 1..2


def test_calibrate_exit_reads_train_never_dev(halting_art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.calibrate_exit as ce
    from nanotrt.runtime.runner import Runner

    art = tmp_path / "art"
    shutil.copytree(halting_art, art)
    data = tmp_path / "glue" / "CoLA"
    data.mkdir(parents=True)
    shutil.copy(FIX / "CoLA" / "train.tsv", data / "train.tsv")  # no dev.tsv here at all
    seen: list[str] = []
    real = ce.read_split

    def spy(task, split="dev", *a, **k):  # noqa: ANN001, ANN202
        seen.append(split)
        return real(task, split, *a, **k)

    monkeypatch.setattr(ce, "read_split", spy)
    rec = ce.calibrate_exit(art, "cola", max_loss=0.5, data_dir=str(tmp_path / "glue"))
    assert seen == ["train"]
    assert rec["holdout"]["count"] == 16 and not rec["holdout"]["seen_in_training"]
    specs = {c["spec"] for c in rec["candidates"]}
    assert {"patience=1", "learned=0.5", "patience=1,maxprob=0.9", "depth=1"} <= specs
    # 16 held-out rows cannot bound any early exit within 0.5 points: full depth, said so, never a guess
    assert rec["default_exit"] == "none" and not rec["bounded"] and rec["rows"] == 16
    assert rec["note"].startswith("cannot bound") and rec["suggest_holdout"] >= 460
    assert rec["chosen"]["metric"] == rec["full_depth"] and rec["chosen"]["avg_exit"] == 3
    assert all(c["bound"] >= c["loss"] for c in rec["candidates"])
    m = json.loads((art / "manifest.json").read_text())
    assert m["exit_calibration"]["confidence"] == 0.9 and m["exit_calibration"]["rows"] == 16
    loose = ce.calibrate_exit(art, "cola", max_loss=100, data_dir=str(tmp_path / "glue"), write=False)
    assert loose["bounded"] and loose["default_exit"] != "none" and loose["chosen"]["bound"] <= 100
    with Runner.from_artifact(art) as r:  # exit=None: the calibrated default
        assert r.policy.spec == rec["default_exit"]
    with Runner.from_artifact(art, exit="none") as r:
        assert r.policy.spec == "none"


def test_agreement_calibrates_on_unlabelled_text(halting_art: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.calibrate_exit as ce

    monkeypatch.setattr(ce, "read_split", lambda *a, **k: pytest.fail("--texts must read no GLUE split"))
    lines = [ln.split("\t")[3] for ln in (FIX / "CoLA" / "train.tsv").read_text().splitlines()]
    (tmp_path / "texts.txt").write_text("\n".join(lines * 8) + "\n")
    rec = ce.calibrate_exit(halting_art, "cola", max_loss=60, texts=tmp_path / "texts.txt", write=False)
    assert rec["criterion"] == "agreement" and rec["full_depth"] is None and rec["rows"] == 8 * len(lines)
    assert rec["bounded"] and rec["default_exit"] != "none" and rec["chosen"]["bound"] <= 60
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(NanotrtError, match="--texts"):
        ce.calibrate_exit(halting_art, "cola", texts=tmp_path / "bad.txt", write=False)


def test_simulate_replays_the_runner(halting_art: Path) -> None:
    from nanotrt.pipeline.calibrate_exit import simulate
    from nanotrt.runtime.exits import parse_exit
    from nanotrt.runtime.runner import Runner

    texts = ["The book was read by me.", "Him went there quickly", "what a day", "She sings.", "Sings she."]
    with Runner.from_artifact(halting_art, exit="none") as r:
        full = r.predict(texts, batch_size=5)
    for spec in ("patience=1", "entropy=0.6", "patience=1,maxprob=0.5", "depth=2"):
        with Runner.from_artifact(halting_art, exit=spec) as r:
            live = r.predict(texts, batch_size=5)
        layers, _ = simulate(parse_exit(spec, num_layers=3), full.ramp_logits)
        assert layers.tolist() == live.exit_layers.tolist(), spec
    with pytest.raises(NanotrtError, match="deadline"):
        simulate(parse_exit("deadline=5ms"), full.ramp_logits)


def test_profile_writes_grid_and_feeds_the_deadline_rule(artifacts: dict[str, Path], tmp_path: Path) -> None:
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.exits import Deadline
    from nanotrt.runtime.profile import DeviceProfile, profile_path, run_profile, write_profile
    from nanotrt.runtime.runner import Runner

    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    path, doc = run_profile(art, batches="1,2", seqs="8,16", repeats=2)
    assert path == profile_path(art, "fp32") and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["machine"]["cores"] and saved["grid"] == {"batch": [1, 2], "seq": [8, 16]}
    assert set(saved["graphs"]) == {"embeddings", "layer_00", "layer_01", "layer_02", "ramp_00", "ramp_01", "ramp_02"}
    assert set(saved["graphs"]["layer_00"]["runs"]) == {"1x8", "1x16", "2x8", "2x16"}
    prof = DeviceProfile(saved)
    assert prof.step_seconds(0, 1, 12) > 0
    with Runner.from_artifact(art, exit="patience=1,deadline=50ms") as r:
        assert isinstance(r.policy, Deadline) and r.policy.profile is not None  # the profile is used
        res = r.predict(["a short text", "another"], batch_size=1)
        assert (res.exit_layers >= 1).all()
    path.write_text(json.dumps(saved) + " ")  # a profile changed behind the manifest's back is refused
    with pytest.raises(NanotrtError, match="profile-fp32.json does not match its sha256"):
        Runner.from_artifact(art, exit="deadline=50ms")
    saved["machine"]["cpu"] = "another CPU"
    write_profile(Manifest.load(art), saved)  # listed and hashed again
    with pytest.warns(UserWarning, match="another machine"), Runner.from_artifact(art, exit="deadline=50ms") as r:
        assert r.policy.profile is None  # measured online instead


def test_deadline_in_the_runner_cuts_depth(artifacts: dict[str, Path]) -> None:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(artifacts["bert"], exit="deadline=1us") as r:  # nothing fits: first ramp
        assert r.predict(["a text", "b"], batch_size=1).exit_layers.tolist() == [1, 1]
    with Runner.from_artifact(artifacts["bert"], exit="deadline=10s") as r:  # everything fits
        assert r.predict(["a text", "b"], batch_size=1).exit_layers.tolist() == [3, 3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nanotrt", *args], capture_output=True, text=True, timeout=300)


def test_cli_exit_errors_are_one_line(artifacts: dict[str, Path]) -> None:
    for spec, needle in (("patience=0", "patience is 1..2"), ("maxprob=1.5", "(0, 1]"), ("entropy=-1", "> 0"),
                         ("depth=4", "depth is 1..3")):
        p = _cli("predict", str(artifacts["bert"]), "text", "--exit", spec)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr


def test_cli_calibrate_and_profile(halting_art: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(halting_art, art)
    p = _cli("calibrate-exit", str(art), "--max-loss", "1", "--data-dir", str(FIX), "--dry-run")
    assert p.returncode == 0 and "default_exit none" in p.stdout and "dry run" in p.stdout, p.stderr
    assert "(16 held-out train rows" in p.stdout and "0.9 upper bound" in p.stdout
    assert "cannot bound" in p.stdout and "--holdout" in p.stdout  # 16 rows: what would be enough
    p = _cli("calibrate-exit", str(art), "--confidence", "1.5", "--data-dir", str(FIX))
    assert p.returncode == 2 and "--confidence" in p.stderr
    assert "default_exit" not in json.loads((art / "manifest.json").read_text())
    p = _cli("calibrate-exit", str(art), "--policy", "nonsense", "--data-dir", str(FIX))
    assert p.returncode == 2 and "unknown policy family" in p.stderr
    p = _cli("profile", str(art), "--batches", "1", "--seqs", "8", "--repeats", "1")
    assert p.returncode == 0 and (art / "profile-fp32.json").is_file(), p.stderr
    assert np.isfinite(json.loads((art / "profile-fp32.json").read_text())["graphs"]["ramp_00"]["load_ms"])


def test_recorder_keeps_exit_prob_per_micro_batch_in_block_mode(halting_art: Path) -> None:
    """calibrate-exit's recorder on an artifact with halting heads, walked in blocks (several micro-batches
    interleaved layer by layer): the same exit_prob as one micro-batch at a time (was an IndexError)."""
    from nanotrt.pipeline.calibrate_exit import _Recorder
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import Runner

    texts = ["The book was read by me.", "Him went there quickly", "what a day", "She sings.", "Go."] * 3
    got = {}
    for mode in ("latency", "block"):
        rec = _Recorder(Manifest.load(halting_art).num_layers)
        with Runner.from_artifact(halting_art, exit=rec, memory_budget="1layer") as r:
            r.predict(texts, batch_size=2, mode=mode)
        got[mode] = np.concatenate(rec.chunks)
    assert not np.isnan(got["block"][:, :-1]).any()
    np.testing.assert_allclose(got["block"], got["latency"], atol=1e-6)
