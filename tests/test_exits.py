"""Exit policies on hand-made logits: decisions, composition, range checks, the deadline rule's clock."""

from __future__ import annotations

import numpy as np
import pytest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.exits import (
    Deadline,
    Learned,
    Patience,
    StepContext,
    bind_policy,
    parse_duration,
    parse_exit,
)

SURE0, SURE1, UNSURE = [4.0, -4.0], [-4.0, 4.0], [0.1, -0.1]  # maxprob 0.9997, 0.9997, 0.55


def walk(policy, ramps, outputs=None, ctxs=None):
    """Feed [B, layers, C] logits layer by layer like the runner; returns 1-based exit layers."""
    ramps = np.asarray(ramps, dtype=np.float32)
    b, n, _ = ramps.shape
    state, active, out = policy.init(b), np.arange(b), np.full(b, n)
    for i in range(n - 1):
        ctx = ctxs(i, active) if ctxs else StepContext({k: v[active, i] for k, v in (outputs or {}).items()})
        stop = policy.step(state, i, ramps[active, i], active, ctx)
        out[active[stop]] = i + 1
        active = active[~stop]
    return out.tolist()


def test_patience_counts_agreeing_ramps_per_sample():
    # sample 0 agrees from layer 1 on -> counter 1 at layer 2, 2 at layer 3: exits at 3 with patience 2
    # sample 1 flips every layer -> never exits early
    ramps = [[SURE0, SURE0, SURE0, SURE0, SURE0], [SURE0, SURE1, SURE0, SURE1, SURE0]]
    assert walk(parse_exit("patience=2"), ramps) == [3, 5]


def test_pcee_only_confident_ramps_count():
    # the same labels, but ramps 2-3 are unconfident: PABEE exits at 3, the PCEE-style rule restarts
    # counting at ramp 4 and exits at 5
    ramps = [[SURE0, UNSURE, UNSURE, SURE0, SURE0, SURE0]]
    assert walk(parse_exit("patience=2"), ramps) == [3]
    assert walk(parse_exit("patience=2,maxprob=0.9"), ramps) == [5]
    assert parse_exit("patience=2,maxprob=0.9").spec == "patience=2,maxprob=0.9"
    assert walk(parse_exit("patience=1,entropy=0.1"), [[SURE0, SURE0, SURE0]]) == [2]


def test_confidence_rules_and_depth():
    ramps = [[UNSURE, SURE1, SURE1], [SURE0, SURE0, SURE0], [UNSURE, UNSURE, UNSURE]]
    assert walk(parse_exit("maxprob=0.9"), ramps) == [2, 1, 3]
    assert walk(parse_exit("entropy=0.1"), ramps) == [2, 1, 3]
    assert walk(parse_exit("depth=2"), ramps) == [2, 2, 2]
    assert walk(parse_exit("none"), ramps) == [3, 3, 3]


def test_learned_reads_exit_prob():
    ramps = np.zeros((3, 4, 2))
    prob = np.array([[0.9, 0.9, 0.9, 1], [0.2, 0.6, 0.2, 1], [0.1, 0.1, 0.1, 1]])
    assert walk(parse_exit("learned=0.5"), ramps, {"exit_prob": prob}) == [1, 2, 4]
    assert walk(parse_exit("learned=0.95"), ramps, {"exit_prob": prob}) == [4, 4, 4]
    with pytest.raises(NanotrtError, match="exit_prob"):
        walk(Learned(0.5), ramps)  # no exit_prob output: one clear error
    with pytest.raises(NanotrtError, match="compute-penalty"):
        bind_policy(parse_exit("learned=0.5"), {"logits"})
    bind_policy(parse_exit("learned=0.5"), {"logits", "exit_prob"})


@pytest.mark.parametrize("spec, valid", [
    ("patience=0", "1..5"), ("patience=6", "1..5"), ("entropy=-1", "> 0"), ("entropy=0", "> 0"),
    ("maxprob=1.5", r"\(0, 1\]"), ("maxprob=0", r"\(0, 1\]"), ("depth=0", "1..layers"), ("depth=7", "1..6"),
    ("learned=0", r"\(0, 1\]"), ("learned=2", r"\(0, 1\]"), ("deadline=0ms", "> 0"), ("deadline=-3ms", "> 0"),
    ("patience=2,delta=0", "> 0"), ("patience=2,maxprob=2", r"\(0, 1\]"),
])
def test_out_of_range_settings_are_refused_with_the_valid_range(spec, valid):
    with pytest.raises(NanotrtError, match=valid):
        parse_exit(spec, num_layers=6)


@pytest.mark.parametrize("spec", ["patience", "foo=3", "entropy=abc", "patience=3,patience=2",
                                  "entropy=0.3,maxprob=0.9", "delta=0.1", "learned=0.5,delta=0.1", "deadline=8xs"])
def test_unreadable_specs_name_the_grammar(spec):
    with pytest.raises(NanotrtError, match="cannot read exit policy"):
        parse_exit(spec)


def test_regression_refuses_probability_rules():
    for spec in ("entropy=0.3", "patience=2,maxprob=0.9", "maxprob=0.9,deadline=5ms"):
        with pytest.raises(NanotrtError, match="regression"):
            parse_exit(spec, "regression")
    assert parse_exit("patience=2,delta=0.05,deadline=5ms", "regression").spec == "patience=2,delta=0.05,deadline=5ms"
    assert parse_exit("learned=0.5", "regression").spec == "learned=0.5"  # a halting head needs no classes


def test_durations():
    assert parse_duration("8ms") == pytest.approx(0.008)
    assert parse_duration("800us") == pytest.approx(0.0008)
    assert parse_duration("0.5s") == pytest.approx(0.5)
    assert parse_duration("8") == pytest.approx(0.008)  # bare numbers are milliseconds
    p = parse_exit("patience=3,deadline=8ms")
    assert isinstance(p, Deadline) and isinstance(p.rule, Patience) and p.spec == "patience=3,deadline=8ms"


class FakeProfile:
    """Embeddings 1 ms; 2 ms per layer+ramp at batch 1, +1 ms per extra row."""

    def step_seconds(self, layer: int, batch: int, seq: int) -> float:
        return 0.002 + 0.001 * (batch - 1)

    def embeddings_seconds(self, batch: int, seq: int) -> float:
        return 0.001


def test_deadline_with_a_fake_profile_stops_at_the_deepest_layer_that_fits():
    pol = parse_exit("deadline=9ms", num_layers=6)
    bind_policy(pol, {"logits"}, FakeProfile())
    ramps = np.tile(np.array(UNSURE, np.float32), (1, 6, 1))
    # a fake clock: embeddings 1 ms, then each layer 2 ms -> layer i ends at 1 + 2i ms
    clock = lambda i, active: StepContext(seq=16, started=0.0, now=0.001 + 0.002 * (i + 1))  # noqa: E731
    # after layer 3 (t = 7 ms) the next would end at 9 ms: still fits; after layer 4 (9 ms) it would not
    assert walk(pol, ramps, ctxs=clock) == [4]
    pol = parse_exit("deadline=4ms")
    bind_policy(pol, {"logits"}, FakeProfile())
    assert walk(pol, ramps, ctxs=clock) == [1]  # not even layer 2 fits: the first ramp answers


def test_deadline_combined_exits_early_when_confident_never_late():
    pol = parse_exit("patience=1,deadline=9ms")
    bind_policy(pol, {"logits"}, FakeProfile())
    clock = lambda i, active: StepContext(seq=16, started=0.0, now=0.001 + 0.002 * (i + 1))  # noqa: E731
    ramps = np.array([[SURE0] * 6, [SURE0, SURE1] * 3], np.float32)
    assert walk(pol, ramps, ctxs=clock) == [2, 4]  # confident one at 2; the flip-flopper at the deadline


def test_deadline_batch_cost_grows_with_rows():
    pol = parse_exit("deadline=12ms")
    bind_policy(pol, {"logits"}, FakeProfile())
    clock = lambda i, active: StepContext(seq=16, started=0.0, now=0.001 + 0.004 * (i + 1))  # noqa: E731
    ramps = np.zeros((3, 6, 2), np.float32)
    # 3 rows: the next step is predicted at 4 ms; after layer 2 (t = 9 ms) 9 + 4 > 12
    assert walk(pol, ramps, ctxs=clock) == [2, 2, 2]


def test_deadline_online_without_profile_uses_measured_intervals():
    pol = parse_exit("deadline=10.5ms")
    ramps = np.zeros((1, 6, 2), np.float32)
    clock = lambda i, active: StepContext(seq=16, started=0.0, now=0.002 * (i + 1))  # noqa: E731
    # steps of 2 ms measured online: after layer 4 (8 ms) the next ends at 10 ms (fits); after 5 it would not
    assert walk(pol, ramps, ctxs=clock) == [5]
    # a slow first batch (engine loads: 20 ms steps) is forgotten within a few batches, never locks in
    slow = lambda i, active: StepContext(seq=16, started=0.0, now=0.020 * (i + 1))  # noqa: E731
    assert walk(pol, ramps, ctxs=slow) == [1]
    assert [walk(pol, ramps, ctxs=clock)[0] for _ in range(30)][-1] == 5


def test_deadline_profile_is_corrected_by_measured_overhead():
    pol = parse_exit("deadline=9ms")
    bind_policy(pol, {"logits"}, FakeProfile())  # the profile says 1 ms + 2 ms per step
    ramps = np.zeros((1, 6, 2), np.float32)
    slow = lambda i, active: StepContext(seq=16, started=0.0, now=0.001 + 0.003 * (i + 1))  # noqa: E731
    # steps really take 3 ms (overhead the profile does not see). Trusting the profile alone would run
    # layer 3 (7 ms + 2 predicted = 9: fits) and finish at 10 ms; the measured 1 ms excess stops at 2.
    assert [walk(pol, ramps, ctxs=slow)[0] for _ in range(5)] == [2] * 5
