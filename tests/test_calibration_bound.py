"""`calibrate_exit.select` (issue 25): the exit setting is chosen by an upper confidence bound of its held-out
loss, on synthetic ramp outputs whose loss is known; no files are read."""

from __future__ import annotations

import numpy as np
import pytest
from nanotrt.pipeline.calibrate_exit import (
    _resampled,
    bound_passing,
    resolution,
    rows_for_resolution,
    select,
)
from nanotrt.pipeline.glue import METRICS, get_task
from nanotrt.runtime.errors import NanotrtError

SST2, COLA, STSB = get_task("sst2"), get_task("cola"), get_task("stsb")


def ramps(labels: np.ndarray, wrong: list[np.ndarray]) -> np.ndarray:
    """[N, layers, 2] logits: ramp i predicts the label except on rows ``wrong[i]`` (the last ramp: none)."""
    n, layers = len(labels), len(wrong) + 1
    out = np.zeros((n, layers, 2), dtype=np.float32)
    for i in range(layers):
        pred = labels.copy()
        if i < len(wrong):
            pred[wrong[i]] = 1 - pred[wrong[i]]
        out[np.arange(n), i, pred] = 3.0
    return out


def draw(n: int, q: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n rows of a population where ramp 1 is wrong on a fraction q and ramps 2..3 are always right:
    depth=1 loses exactly 100*q accuracy points in the population."""
    y = rng.integers(0, 2, n)
    return y, ramps(y, [rng.random(n) < q, np.zeros(n, dtype=bool)])


def test_bound_covers_a_known_loss_at_the_stated_confidence() -> None:
    rng = np.random.default_rng(0)
    q = 0.02  # depth=1 loses 2 points
    cover, sel = [], None
    for _ in range(60):
        y, lg = draw(600, q, rng)
        sel = select(SST2, y, lg, None, ["depth=1"], "classification", max_loss=50, confidence=0.9)
        c = sel.candidates[0]
        assert c.bound >= c.loss
        cover.append(c.bound >= 100 * q)
    assert 0.8 <= np.mean(cover) <= 0.99  # ~0.9 of draws bound the true loss; a point estimate: ~0.5
    assert sel is not None and sel.rows == 600 and sel.criterion == "metric" and sel.full_depth == 1.0


def test_point_estimate_within_max_loss_but_bound_not_keeps_a_later_exit() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    wrong1 = np.zeros(2000, dtype=bool)
    wrong1[:8] = True  # depth=1: 0.4 points on these rows, within 0.5 by the point estimate
    lg = ramps(y, [wrong1, np.zeros(2000, dtype=bool)])
    sel = select(SST2, y, lg, None, ["depth=1", "depth=2"], "classification", max_loss=0.5)
    one, two = sel.candidates
    assert one.loss == pytest.approx(0.4) and one.bound > 0.5 and not one.passed
    assert two.loss == 0 and two.passed and sel.spec == "depth=2" and sel.avg_exit == 2.0
    assert sel.suggest_holdout is not None and sel.suggest_holdout > 2000  # a wider slice would let depth=1 pass
    assert "--holdout" in sel.note
    loose = select(SST2, y, lg, None, ["depth=1", "depth=2"], "classification", max_loss=0.5, confidence=0.5)
    assert loose.spec == "depth=1"  # the bound at confidence 0.5 is about the point estimate


def test_tiny_holdout_cannot_bound_and_keeps_full_depth() -> None:
    y = np.arange(40) % 2
    lg = ramps(y, [np.zeros(40, dtype=bool)] * 2)  # every ramp agrees with full depth on all 40 rows
    sel = select(SST2, y, lg, None, ["depth=1", "depth=2"], "classification", max_loss=0.5)
    assert sel.spec == "none" and not sel.bounded and sel.avg_exit == 3.0 and sel.rows == 40
    assert sel.passing == []
    assert sel.note.startswith("cannot bound: 40 held-out rows")
    need = rows_for_resolution(0.5, 0.9)
    assert sel.suggest_holdout == need and resolution(need, 0.9) <= 0.5 < resolution(need - 1, 0.9)
    assert sel.candidates[0].loss == 0 and sel.candidates[0].bound > 0.5  # zero observed loss is not zero risk
    agree = select(SST2, None, lg, None, ["depth=1"], "classification", max_loss=0.5)
    assert agree.spec == "none" and not agree.bounded


def test_agreement_needs_no_labels_and_is_an_exact_binomial_bound() -> None:
    from scipy.stats import beta

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    wrong1 = np.zeros(1000, dtype=bool)
    wrong1[:30] = True
    lg = ramps(y, [wrong1, np.zeros(1000, dtype=bool)])
    sel = select(COLA, None, lg, None, ["depth=1", "depth=2"], "classification", max_loss=5.0)
    one = sel.candidates[0]
    assert sel.criterion == "agreement" and sel.full_depth is None
    assert one.loss == pytest.approx(3.0) and one.bound == pytest.approx(100 * beta.ppf(0.9, 31, 970))
    assert sel.spec == "depth=1"  # 3% disagree, bound ~3.7% <= 5%
    strict = select(COLA, y, lg, None, ["depth=1", "depth=2"], "classification", max_loss=3.2, agreement=True)
    assert strict.spec == "depth=2"  # point 3.0 within 3.2, bound not


def test_regression_agreement_counts_rows_beyond_a_tolerance() -> None:
    n = 1000
    full = np.linspace(0, 5, n, dtype=np.float32)
    lg = np.stack([full + np.where(np.arange(n) < 20, 1.0, 0.01), full], 1)[..., None]  # [N, 2, 1]
    sel = select(STSB, None, lg, None, ["depth=1"], "regression", max_loss=5.0)
    assert sel.candidates[0].loss == pytest.approx(2.0)  # 20 rows off by 1.0 (> 5% of the 0..5 range)


def test_live_ramps_replay_only_those_and_report_real_layers() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 1000)
    lg = ramps(y, [np.ones(1000, dtype=bool), np.zeros(1000, dtype=bool), np.zeros(1000, dtype=bool)])
    specs = ["depth=1", "depth=3"]
    sel = select(SST2, y, lg, None, specs, "classification", max_loss=0.5, live=[1])
    assert [c.avg_exit for c in sel.candidates] == [2.0, 4.0]  # only ramp 2 (and the last layer) can stop
    assert sel.spec == "depth=1" and sel.avg_exit == 2.0 and sel.passing == ["depth=1", "depth=3"]
    everything = select(SST2, y, lg, None, specs, "classification", max_loss=0.5)
    assert everything.spec == "depth=3" and everything.passing == ["depth=3"]  # ramp 1 is always wrong
    plan_test = bound_passing(SST2, y, lg, None, "classification", max_loss=0.5)  # what `nanotrt plan` calls
    assert plan_test(specs, [1]) == ["depth=1", "depth=3"] and plan_test(specs, None) == ["depth=3"]
    with pytest.raises(NanotrtError, match="live ramps"):
        select(SST2, y, lg, None, ["depth=1"], "classification", max_loss=0.5, live=[7])


def test_a_lucky_setting_after_a_failing_one_of_its_family_is_not_tested() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 1000)
    lg = ramps(y, [np.zeros(1000, dtype=bool), np.ones(1000, dtype=bool)])  # ramp 2 wrong, ramp 1 right
    sel = select(SST2, y, lg, None, ["depth=1", "depth=2"], "classification", max_loss=0.5)
    one, two = sel.candidates
    assert one.loss == 0 and not one.tested and not one.passed and not two.passed
    assert sel.spec == "none" and sel.bounded


def test_bad_confidence_is_one_clear_error() -> None:
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(NanotrtError, match="--confidence"):
        select(SST2, y, ramps(y, [np.zeros(10, dtype=bool)]), None, ["depth=1"], "classification", 0.5, 1.0)


@pytest.mark.parametrize("name", ["accuracy", "mcc", "f1", "pearson"])
def test_vectorised_resampled_metrics_match_glue(name: str) -> None:
    rng = np.random.default_rng(5)
    reg = name == "pearson"
    y = rng.normal(size=200) if reg else rng.integers(0, 2, 200)
    p = y + rng.normal(size=200) if reg else np.where(rng.random(200) < 0.3, 1 - y, y)
    idx = rng.integers(0, 200, size=(7, 200))
    got = _resampled(name, y[idx], p[idx])
    assert got == pytest.approx([METRICS[name](y[i], p[i]) for i in idx])


def test_bench_report_states_the_bound_and_its_rows() -> None:
    from nanotrt.pipeline.benchreport import calibration_line

    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 1000)
    sel = select(SST2, y, ramps(y, [np.zeros(1000, dtype=bool)]), None, ["depth=1"], "classification", 0.5)
    report = {"exit_source": "calibrated default_exit", "exit_calibration": sel.record()}
    line = calibration_line(report)
    assert line.startswith("Calibrated on 1000 held-out rows: loss 0.00 points, upper bound 0.23 at confidence 0.9")
    assert calibration_line({**report, "exit_source": "--exit"}) == ""


def test_an_exit_that_beats_full_depth_on_the_rows_still_pays_the_margin() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000)
    lg = ramps(y, [np.arange(1000) < 10])  # ramp 1 wrong on rows 0..9
    lg[20:40, 1] = lg[20:40, 1, ::-1]  # full depth wrong on rows 20..39: depth=1 is 1 point *better* here
    sel = select(SST2, y, lg, None, ["depth=1"], "classification", max_loss=0.5)
    c = sel.candidates[0]
    assert c.loss == pytest.approx(-1.0) and c.bound > 0.5 and sel.spec == "none"  # 30 rows differ: noise
