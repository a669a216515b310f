"""`nanotrt plan`: the DP against brute force on synthetic cost/exit tables, the degenerate plans, segment graphs
equal to the per-layer walk, held-out train rows only, and the memory budget."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nanotrt.pipeline.plan import Costs, Segment, brute_force_plan, dp_plan, expected_cost

FIX = Path(__file__).parent / "fixtures" / "glue"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "A somewhat longer sentence, with some punctuation!"]


def _costs(n: int, draw: st.DrawFn) -> Costs:
    pos = st.floats(0.0, 1.0)
    return Costs(draw(pos), [draw(pos) for _ in range(n)], [draw(pos) for _ in range(n)], draw(pos), draw(pos),
                 draw(pos), [draw(pos) for _ in range(n)], [draw(pos) for _ in range(n)], draw(st.booleans()))


@st.composite
def tables(draw: st.DrawFn) -> tuple[Costs, np.ndarray, list[float], list[float], float]:
    n = draw(st.integers(1, 6))
    costs = _costs(n, draw)
    exits = np.sort(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))[::-1]
    reach = np.array([1.0, *exits[: n - 1], 0.0])  # share still running after layer j: non-increasing
    sizes = [draw(st.floats(0.1, 1.0)) for _ in range(n)]
    ramps = [draw(st.floats(0.0, 0.5)) for _ in range(n)]
    return costs, reach, sizes, ramps, draw(st.floats(0.5, 4.0))


def _fits(sizes: list[float], ramps: list[float], budget: float):  # noqa: ANN202
    return lambda s, e, r: sum(sizes[s:e]) + (ramps[e - 1] if r else 0.0) <= budget


@settings(max_examples=300, deadline=None)
@given(tables())
def test_dp_equals_brute_force(table: tuple[Costs, np.ndarray, list[float], list[float], float]) -> None:
    costs, reach, sizes, ramps, budget = table
    fits = _fits(sizes, ramps, budget)
    try:
        want, _ = brute_force_plan(costs, reach, fits)
    except Exception:  # noqa: BLE001
        want = float("inf")
    if not np.isfinite(want):
        with pytest.raises(Exception, match="no plan fits"):
            dp_plan(costs, reach, fits)
        return
    got, segs = dp_plan(costs, reach, fits)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert expected_cost(costs, segs, reach) == pytest.approx(got, rel=1e-9, abs=1e-12)
    assert segs[0].start == 0 and segs[-1].end == costs.n and segs[-1].ramp
    assert all(a.end == b.start for a, b in zip(segs, segs[1:], strict=False))
    assert all(fits(s.start, s.end, s.ramp and not s.ramp_alone) for s in segs)


def _flat(n: int, call: float = 1.0) -> Costs:
    return Costs(0.1, [1.0] * n, [0.2] * n, call, 0.01)


def test_no_exit_is_one_segment() -> None:
    """Nobody exits early (reach 1 everywhere): every boundary is pure overhead."""
    _, segs = dp_plan(_flat(6), np.array([1.0] * 6 + [0.0]), lambda s, e, r: True)
    assert segs == [Segment(0, 6, True)]


def test_one_layer_budget_is_per_layer() -> None:
    """Room for one layer and not its ramp next to it: today's per-layer walk, ramps as their own graphs."""
    _, segs = dp_plan(_flat(4), np.array([1.0, 0.6, 0.3, 0.1, 0.0]), lambda s, e, r: e - s <= 1 and not (r and e > s))
    assert [(s.start, s.end) for s in segs] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert all(s.ramp_alone for s in segs if s.ramp) and segs[-1].ramp


def test_early_exits_make_live_ramps() -> None:
    """Most rows stop after layer 2: a live ramp there pays; none at layer 1, where nobody stops."""
    _, segs = dp_plan(_flat(6, call=0.3), np.array([1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.0]), lambda s, e, r: True)
    assert [(s.start, s.end, s.ramp) for s in segs] == [(0, 2, True), (2, 6, True)]


# --- on a trained tiny model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planned(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.train import TrainConfig, train

    root = tmp_path_factory.mktemp("plan")
    train(tiny_dirs["bert"], root / "ckpt", TrainConfig(task="cola", epochs=3, batch_size=8, lr=2e-3, data_dir=str(FIX),
                                                       seed=0, holdout=24))
    art = export_model(root / "ckpt", root / "art").root
    build(art, dynamic=True)
    return art


def _logits(art: Path, variant: str, exit: str | None, budget: str = "all") -> tuple[np.ndarray, np.ndarray, str]:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(art, variant=variant, exit=exit, memory_budget=budget) as r:
        res = r.predict(TEXTS, ["a pair", "another pair of words", "x"], batch_size=2)
        return res.logits, res.exit_layers, r.variant


def test_plan_graphs_equal_the_per_layer_walk(planned: Path) -> None:
    from nanotrt.pipeline.plan import make_plan
    from nanotrt.runtime.artifact import Manifest

    for dynamic in (False, True):
        rec = make_plan(planned, max_loss=100.0, data_dir=str(FIX), dynamic=dynamic, precision="fp32" if not dynamic else "int8")
        plan, source = rec["variant"], rec["source"]
        got, layers, _ = _logits(planned, plan, "none")
        want, _, _ = _logits(planned, source, "none")
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert (layers == Manifest.load(planned).num_layers).all()
        # the plan's own rule: samples stop only at live ramps, with that ramp's logits
        got, layers, _ = _logits(planned, plan, None)
        assert set(layers.tolist()) <= set(rec["live_ramps"])
        from nanotrt.runtime.runner import Runner

        with Runner.from_artifact(planned, variant=source, exit="none") as r:
            ramps = r.predict(TEXTS, ["a pair", "another pair of words", "x"], batch_size=2).ramp_logits
        np.testing.assert_allclose(got, ramps[np.arange(len(TEXTS)), layers - 1], atol=1e-5)
    assert Manifest.load(planned).best_variant("fp32") == "ort-fp32-plan"  # what predict runs by default


def test_no_exit_plan_is_one_graph_with_the_embeddings(planned: Path, tmp_path: Path) -> None:
    from nanotrt.pipeline.plan import make_plan

    art = tmp_path / "art"
    shutil.copytree(planned, art)
    rec = make_plan(art, data_dir=str(FIX), exits=False)
    assert rec["exit"] == "none" and [(s["start"], s["end"]) for s in rec["segments"]] == [(0, 3)]
    got, layers, variant = _logits(art, None, None)
    assert variant == "ort-fp32-plan" and (layers == 3).all()
    np.testing.assert_allclose(got, _logits(art, "ort-fp32", "none")[0], atol=1e-5)


def test_plan_reads_train_never_dev(planned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.calibrate_exit as ce
    from nanotrt.pipeline.plan import make_plan

    data = tmp_path / "glue" / "CoLA"
    data.mkdir(parents=True)
    shutil.copy(FIX / "CoLA" / "train.tsv", data / "train.tsv")  # no dev.tsv at all
    seen: list[str] = []
    real = ce.read_split
    monkeypatch.setattr(ce, "read_split", lambda task, split="dev", *a, **k: seen.append(split) or real(task, split, *a, **k))
    rec = make_plan(planned, max_loss=0.5, data_dir=str(tmp_path / "glue"), write=False)
    assert seen == ["train"] and rec["holdout"]["count"] == 24 and not rec["holdout"]["seen_in_training"]


@pytest.mark.parametrize("budget", ["2layers", "1layer"])
def test_plan_under_a_budget_fits_it(planned: Path, tmp_path: Path, budget: str) -> None:
    """Every segment with one full-length example's activations fits; at one layer the ramps (and the
    embeddings) run as graphs of their own, and the logits still equal the per-layer walk."""
    from nanotrt.pipeline.plan import make_plan
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import Activations, Runner, resolve_budget

    art = tmp_path / "art"
    shutil.copytree(planned, art)
    rec = make_plan(art, max_loss=100.0, memory_budget=budget, data_dir=str(FIX))
    m = Manifest.load(art)
    limit = resolve_budget(budget, m, rec["variant"])
    assert limit == rec["budget_bytes"]
    acts = Activations.from_manifest(m).block([(1, int(m.tokenizer["max_length"]))])
    for name in m.schedule(rec["variant"]).names():
        assert int(m.graphs[name]["bytes"]) + acts <= limit
    with Runner.from_artifact(art, memory_budget=budget, exit="none") as r:
        assert r.variant == rec["variant"]
        res = r.predict(TEXTS * 4, batch_size=1)
        assert res.stats.cache["peak_total_bytes"] <= limit
    np.testing.assert_allclose(res.logits, np.tile(_source_logits(art, rec["source"]), (4, 1)), atol=1e-5)
    if budget == "2layers":
        with Runner.from_artifact(art, memory_budget="1layer") as r:  # planned for more: the resolver passes it over
            assert r.variant != rec["variant"]


def _source_logits(art: Path, source: str) -> np.ndarray:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(art, variant=source, exit="none") as r:
        return r.predict(TEXTS, batch_size=1).logits


def test_cli_plan(planned: Path, tmp_path: Path) -> None:
    nanotrt = [sys.executable, "-m", "nanotrt"]
    p = subprocess.run([*nanotrt, "plan", str(planned), "--max-loss", "1", "--data-dir", str(FIX), "--dry-run"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "segments" in p.stdout and "held-out train rows" in p.stdout and "(dry run)" in p.stdout
    p = subprocess.run([*nanotrt, "plan", str(planned), "--max-loss", "-1"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "Traceback" not in p.stderr


def test_tensorrt_plan_on_the_fake_tensorrt(planned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same planner on the TensorRT backend: segments composed from the ONNX each per-layer plan was parsed
    from, built into plans by the same build code (here the fake TensorRT, which enforces TensorRT's rules),
    giving the per-layer plans' logits."""
    from fake_tensorrt import FakeTensorRT
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.plan import make_plan
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import Runner

    FakeTensorRT().install(monkeypatch, polygraphy=True)
    art = tmp_path / "art"
    shutil.copytree(planned, art)
    build(art, backend="tensorrt", fp16=True)
    rec = make_plan(art, max_loss=100.0, precision="fp16", backend="tensorrt", data_dir=str(FIX))
    m = Manifest.load(art)
    assert rec["variant"] == "trt-fp16-plan" and m.best_variant("fp16", "tensorrt") == "trt-fp16-plan"
    plans = [m.graphs[g] for g in m.schedule("trt-fp16-plan").names()]
    assert all(g["format"] == "trt-plan" and "scratch_bytes" in g for g in plans)
    got = {}
    for variant in ("trt-fp16-plan", "trt-fp16"):
        with Runner.from_artifact(art, backend="tensorrt", variant=variant, exit="none") as r:
            got[variant] = r.predict(TEXTS, batch_size=2).logits
    np.testing.assert_allclose(got["trt-fp16-plan"], got["trt-fp16"], atol=1e-3)
