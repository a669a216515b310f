"""Layer-major block schedule, budgets that include activations, the shared ORT thread pool, fused variants."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PAIRS, TEXTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nanotrt.engines.onnxruntime import OrtBackend
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner

SENTS = [
    "the film is a triumph", "i hated every minute of it", "an ok movie", "what a waste of time and money",
    "brilliant acting , dull plot", "it rains", "nobody expected the ending to be this good , honestly",
    "bad", "good", "the cast does what it can with a script that goes nowhere slowly", "a gem",
    "two hours i will never get back",
]
SECOND = [f"second sentence number {i} of the pair" + " and more" * (i % 4) for i in range(len(SENTS))]


class AuditBackend(OrtBackend):
    """Checks on every load and every run that engines + the runner's reserved activations fit the budget,
    and that the reserved activations cover the hidden states actually fed."""

    def __init__(self) -> None:
        super().__init__()
        self.runner: Runner | None = None
        self.held = 0
        self.lock = threading.Lock()
        self.worst_fed = 0
        self.peak_total = 0  # engines this backend holds + the runner's reserved activations, at loads and runs

    def _check(self) -> None:
        r = self.runner
        if r is not None:
            self.peak_total = max(self.peak_total, self.held + r.cache.activation_bytes)
        if r is not None and r.budget is not None:
            assert self.held + r.cache.activation_bytes <= r.budget, (self.held, r.cache.activation_bytes, r.budget)

    def load(self, manifest: Any, name: str) -> Any:
        e = super().load(manifest, name)
        with self.lock:
            self.held += e.nbytes
            self._check()
        return e

    def release(self, engine: Any) -> None:
        with self.lock:
            self.held -= engine.nbytes
        super().release(engine)

    def run(self, engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().run(engine, feeds)
        assert self.runner is not None
        fed = sum(a.nbytes for a in feeds.values()) + sum(a.nbytes for a in out.values())
        self.worst_fed = max(self.worst_fed, fed)
        assert fed <= self.runner.cache.activation_bytes, (engine.name, fed, self.runner.cache.activation_bytes)
        self._check()
        return out


def audited(art: Path, **kw: Any) -> tuple[Runner, AuditBackend]:
    from nanotrt.runtime.artifact import Manifest

    be = AuditBackend()
    r = Runner(Manifest.load(art), be, **kw)
    be.runner = r
    return r, be


def tight_budget(art: Path, texts: list[str], pairs: list[str] | None, batch_size: int) -> int:
    """The smallest budget that runs these inputs at this batch size: one largest graph + one batch."""
    with Runner.from_artifact(art) as r:
        worst = 0
        for s in range(0, len(texts), batch_size):
            enc = r.tokenizer(texts[s:s + batch_size], None if pairs is None else pairs[s:s + batch_size])
            worst = max(worst, r.acts.block([enc["input_ids"].shape]))
        return r.largest + worst


@pytest.fixture(scope="module")
def spiky_all(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family with random, confident ramps, so samples exit at different layers."""
    import torch
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model, save_checkpoint

    root, arts = tmp_path_factory.mktemp("spiky_all"), {}
    for fam, d in tiny_dirs.items():
        m = load_model(d, pooling="mean")
        g = torch.Generator().manual_seed(4)  # a seed that gives varied exits in every family
        with torch.no_grad():
            for r in m.ramps:
                r.dense.weight.copy_(torch.randn(r.dense.weight.shape, generator=g))
                r.out.weight.copy_(3 * torch.randn(r.out.weight.shape, generator=g))
        save_checkpoint(m, root / f"{fam}-ckpt", tokenizer_src=d)
        arts[fam] = export_model(root / f"{fam}-ckpt", root / fam, include_checkpoint=False).root
    return arts


@pytest.mark.parametrize("exit_spec", ["patience=1", "none"])
def test_block_equals_batch1_every_family(spiky_all: dict[str, Path], family: str, exit_spec: str) -> None:
    """Layer-major blocks under a streaming budget give the batch-1 latency path's logits and exit layers
    (padding from micro-batches of 3, sentence pairs, per-sample exits)."""
    art = spiky_all[family]
    with Runner.from_artifact(art, exit=exit_spec) as r:
        ref = r.predict(SENTS, SECOND, batch_size=1, mode="latency")
    budget = tight_budget(art, SENTS, SECOND, 3) + 4 * 2**10
    runner, be = audited(art, memory_budget=budget, exit=exit_spec)
    with runner:
        assert runner.streaming
        res = runner.predict(SENTS, SECOND, batch_size=3)  # auto -> block
        assert res.stats.mode == "block"
        assert res.stats.blocks < len(SENTS) / 3  # several micro-batches share each load
    np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5)
    assert res.exit_layers.tolist() == ref.exit_layers.tolist()
    if exit_spec != "none":
        assert len(set(ref.exit_layers.tolist())) > 1, "random ramps should exit at different layers"


def test_block_loads_each_graph_once_per_block(artifacts: dict[str, Path]) -> None:
    """The point of the layer-major order: a block costs one load per graph, however many micro-batches."""
    art, texts = artifacts["bert"], SENTS * 4
    with Runner.from_artifact(art) as r:  # room for the whole block's activations next to one graph
        budget = r.largest + r.acts.block([r.tokenizer(texts[s:s + 2])["input_ids"].shape
                                           for s in range(0, len(texts), 2)])
    with Runner.from_artifact(art, memory_budget=budget, prefetch=False) as r:
        graphs = len(set(r.cache.order))
        assert r.streaming
        res = r.predict(texts, batch_size=2, mode="block")
        latency = r.predict(texts, batch_size=2, mode="latency")
    assert res.stats.blocks == 1
    assert res.stats.cache["loads"] <= graphs
    assert latency.stats.cache["loads"] - res.stats.cache["loads"] > graphs  # latency mode reloads per batch
    np.testing.assert_allclose(res.logits, latency.logits, atol=1e-5)


def test_sessions_created_only_by_loads(artifacts: dict[str, Path]) -> None:
    """Sessions are built by swaps only (the measured design keeps session-per-swap: ort_load_options.md);
    in block mode that is one per graph per block, never one per micro-batch."""
    art = artifacts["roberta"]
    budget = tight_budget(art, SENTS, None, 1)
    for prefetch in (True, False):
        runner, be = audited(art, memory_budget=budget, prefetch=prefetch)
        with runner:
            res = runner.predict(SENTS * 3, batch_size=1, mode="block")
            assert be.sessions_created == res.stats.cache["loads"]
            if not prefetch:  # (a prefetch may be evicted unused when the next block needs the room)
                assert be.sessions_created <= res.stats.blocks * len(set(runner.cache.order))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.integers(0, 400_000), n=st.integers(1, 12), batch=st.integers(1, 5),
       mode=st.sampled_from(["auto", "latency", "block"]), block=st.one_of(st.none(), st.integers(1, 8)),
       exit_spec=st.sampled_from(["none", "patience=1", "entropy=0.6"]), pairs=st.booleans(),
       prefetch=st.booleans())
def test_budget_never_exceeded_including_activations(artifacts: dict[str, Path], extra: int, n: int, batch: int,
                                                     mode: str, block: int | None, exit_spec: str, pairs: bool,
                                                     prefetch: bool) -> None:
    art = artifacts["bert"]
    texts, second = SENTS[:n], (SECOND[:n] if pairs else None)
    budget = tight_budget(art, texts, second, 1) + extra
    runner, be = audited(art, memory_budget=budget, exit=exit_spec, prefetch=prefetch)
    with runner:
        res = runner.predict(texts, second, batch_size=batch, mode=mode, block_size=block)
        c = res.stats.cache
        assert c["peak_total_bytes"] <= budget
        # the reported peak is no under-count: at least what the backend itself saw held next to the activations
        assert 0 < be.peak_total <= c["peak_total_bytes"]
        assert be.worst_fed <= c["peak_activation_bytes"]
    assert be.held == 0


def test_nlayers_counts_the_largest_graph_and_runs_any_length(artifacts: dict[str, Path]) -> None:
    art = artifacts["albert"]
    long = [" ".join(["word"] * 400)]  # truncated to max_length
    with Runner.from_artifact(art, memory_budget="1layer") as r:
        assert r.budget is not None and r.budget >= r.largest  # embeddings included in "largest"
        r.predict(long + SENTS[:3], batch_size=4)
    with Runner.from_artifact(art) as r:
        budget = r.largest + r.acts.block([(1, 4)])
    with Runner.from_artifact(art, memory_budget=budget) as r, pytest.raises(NanotrtError, match="use at least"):
        r.predict(long)


def test_mode_and_block_size_are_checked(artifacts: dict[str, Path]) -> None:
    with Runner.from_artifact(artifacts["bert"]) as r:
        with pytest.raises(NanotrtError, match="unknown mode"):
            r.predict(TEXTS, mode="fast")
        with pytest.raises(NanotrtError, match="block size"):
            r.predict(TEXTS, mode="block", block_size=0)
        assert r.predict(TEXTS, PAIRS, mode="block").stats.mode == "block"
        assert r.predict(TEXTS, PAIRS).stats.mode == "latency"  # all resident: nothing to amortize


def test_thread_pool_set_once_with_several_runners(artifacts: dict[str, Path]) -> None:
    """In a fresh process: three runners (two thread settings) create ORT's global pool exactly once, and
    their sessions run on it."""
    art = str(artifacts["bert"])
    code = f"""
import json, warnings, onnxruntime as ort
calls = []
real = ort.set_global_thread_pool_sizes
ort.set_global_thread_pool_sizes = lambda *a: (calls.append(a), real(*a))[1]
from nanotrt.runtime.runner import Runner
runners = [Runner.from_artifact({art!r}, threads=t) for t in (2, 2, None)]
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    runners.append(Runner.from_artifact({art!r}, threads=1))
outs = [r.predict(['a text', 'another one'], batch_size=2).logits.tolist() for r in runners]
print(json.dumps({{'calls': calls, 'shared': [r.backend.shared_pool for r in runners],
                  'warned': len(w), 'same': all(o == outs[0] for o in outs)}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "NANOTRT_ORT_THREAD_POOL"}  # the default: shared
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["calls"] == [[2, 1]]
    assert out["shared"] == [True] * 4
    assert out["warned"] == 1  # threads=1 cannot resize the existing pool: said once, not silently
    assert out["same"]


def test_pool_made_by_the_application_is_used(artifacts: dict[str, Path]) -> None:
    """An application made ORT's global pool before nanotrt: ORT's refusal (status FAIL, not its text) says so,
    and the runner's sessions join that pool."""
    code = (
        "import onnxruntime as ort\n"
        "ort.set_global_thread_pool_sizes(1, 1)\n"
        "from nanotrt.engines.onnxruntime import _POOL\n"
        "from nanotrt.runtime.runner import Runner\n"
        f"with Runner.from_artifact({str(artifacts['bert'])!r}) as r:\n"
        "    n = len(r.predict(['a text', 'another']).predictions)\n"
        "print(r.backend.shared_pool, _POOL['threads'], n)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NANOTRT_ORT_THREAD_POOL"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "existing", "2"]


def test_offline_sessions_meet_the_shared_pool(tmp_path: Path) -> None:
    """In this process ORT's shared pool exists (conftest), as in an application that ran a Runner: the
    project's own sessions and ORT's tools it calls still work; a plain session shows the trap they avoid."""
    import onnx
    import onnxruntime as ort
    from nanotrt.calibration.quantize import quantize_static_qdq, relative_error
    from nanotrt.engines.onnxruntime import _POOL, session_options
    from onnx import TensorProto, helper, numpy_helper

    assert _POOL["created"] is True
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])], [w])
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    batches = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(3)]
    assert quantize_static_qdq(src, dst, batches, ["x"])  # ORT's calibrator builds sessions of its own
    assert 0 < relative_error(src, dst, batches) < 0.1
    ort.InferenceSession(str(dst), session_options(ort), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="use_per_session_threads"):  # what a plain session meets
        ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])


def test_per_session_pools_still_available(artifacts: dict[str, Path]) -> None:
    """thread_pool="session" in a process that chooses it first; in this one (the shared pool exists, as in
    any process that ran a default runner) ORT would refuse its sessions: one clear error up front."""
    code = (
        "from nanotrt.runtime.runner import Runner\n"
        f"with Runner.from_artifact({str(artifacts['bert'])!r}, thread_pool='session', threads=1) as r:\n"
        "    assert not r.backend.shared_pool\n"
        f"    print(len(r.predict({TEXTS!r}).predictions))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == str(len(TEXTS)), p.stderr
    with pytest.raises(NanotrtError, match="process-wide pool exists"):
        Runner.from_artifact(artifacts["bert"], thread_pool="session")
    with pytest.raises(NanotrtError, match="thread_pool"):
        OrtBackend(thread_pool="global")


@pytest.fixture(scope="module")
def fused_art(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanotrt.pipeline.build import build

    art = tmp_path_factory.mktemp("fused") / "art"
    shutil.copytree(artifacts["albert"], art)  # shared layer graph: fused graphs are per (layer, ramp)
    build(art, fused=True)
    return art


def test_fused_variant_matches_unfused(fused_art: Path) -> None:
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(fused_art)
    assert "ort-fp32-fused" in m.variants
    with Runner.from_artifact(fused_art, variant="ort-fp32", exit="patience=1") as r:
        ref = r.predict(SENTS, batch_size=3)
    with Runner.from_artifact(fused_art, variant="ort-fp32-fused", exit="patience=1") as r:
        assert all(s.ramp for s in r.steps[1:]) and len(r.cache.order) == 1 + r.n  # one engine call per layer
        res = r.predict(SENTS, batch_size=3)
    np.testing.assert_allclose(res.ramp_logits, ref.ramp_logits, atol=1e-5)
    assert res.exit_layers.tolist() == ref.exit_layers.tolist()


def test_fused_rebuild_is_idempotent(fused_art: Path) -> None:
    from nanotrt.pipeline.build import build

    before = (fused_art / "manifest.json").read_text()
    build(fused_art, fused=True)
    assert (fused_art / "manifest.json").read_text() == before


def test_profile_and_deadline_rule_agree_with_the_runner(fused_art: Path, tmp_path: Path) -> None:
    """On an artifact with fp32, ort-fp32 and ort-fp32-fused, `nanotrt profile` measures the variant the runner
    runs, under the runner's swapping decision (also for a budget that holds the engines but not them plus a
    full-length example), and a deadline rule then runs with that profile."""
    from nanotrt.runtime.profile import profile_path, run_profile

    art = tmp_path / "art"
    shutil.copytree(fused_art, art)
    assert {"fp32", "ort-fp32", "ort-fp32-fused"} <= set(Manifest.load(art).variants)
    with Runner.from_artifact(art) as r:
        engines_only = str(sum(r.cache.sizes.values()) + 1000)
    for budget in ("all", engines_only, "1layer"):
        path, doc = run_profile(art, memory_budget=budget, batches="1", seqs="8", repeats=1)
        with Runner.from_artifact(art, memory_budget=budget, exit="patience=2,deadline=50ms") as r:
            assert doc["variant"] == r.variant == "ort-fp32-fused" and path == profile_path(art, r.variant)
            assert doc["swapping"] == r.streaming == (budget != "all")
            assert r.policy.profile is not None and r.policy.profile.data["variant"] == r.variant  # type: ignore[attr-defined]
    with Runner.from_artifact(art, variant="ort-fp32", exit="patience=2,deadline=50ms") as r:
        assert r.policy.profile is None  # type: ignore[attr-defined]  # none made for ort-fp32: measured online


def test_profile_agrees_with_the_runner_on_tensorrt(artifacts: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a TensorRT artifact (fake TensorRT: plans run by ONNX Runtime): `profile --backend tensorrt`
    measures the trt variant the runner runs (it once picked an ONNX variant the backend refused), and counts
    the backend's working set in the budget as the runner does."""
    import importlib

    import nanotrt.engines.tensorrt as te
    from fake_tensorrt import FakeTensorRT, make_plan
    from nanotrt.pipeline.build import build
    from nanotrt.runtime.profile import run_profile

    FakeTensorRT().install(monkeypatch)
    try:  # the TensorRT build code moves to the offline side (issue 19); patch it where it lives
        builder: Any = importlib.import_module("nanotrt.pipeline.trt_build")
    except ImportError:
        builder = te
    monkeypatch.setattr(builder, "build_plan", lambda onnx_path, plan_path, inputs, options, cache:
                        plan_path.write_bytes(make_plan(str(onnx_path), 4096)))
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    build(art, backend="tensorrt")
    with Runner.from_artifact(art, backend="tensorrt") as r:
        engines_only = str(sum(r.cache.sizes.values()) + r.reserved + 1000)
    for budget in ("all", engines_only):
        _, doc = run_profile(art, backend="tensorrt", memory_budget=budget, batches="1", seqs="8", repeats=1)
        with Runner.from_artifact(art, backend="tensorrt", memory_budget=budget,
                                  exit="patience=2,deadline=50ms") as r:
            assert doc["variant"] == r.variant == "trt-fp32" and doc["backend"] == "tensorrt"
            assert doc["swapping"] == r.streaming == (budget != "all")
            assert r.policy.profile is not None  # type: ignore[attr-defined]
