"""Streaming runtime: budgets, prefetch, swaps, exit policies vs a PyTorch reference, batch compaction.

Runs in a core install (no torch) on the committed tiny artifact; the tests that need the offline stack
(export, the PyTorch reference) skip there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PAIRS, TEXTS, TINY_ARTIFACT
from nanotrt.engines.onnxruntime import OrtBackend
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import get_backend, register_backend
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.exits import parse_exit
from nanotrt.runtime.runner import Runner
from test_streaming import tight_budget

MANY = [
    "the film is a triumph", "i hated every minute of it", "an ok movie", "what a waste of time and money",
    "brilliant acting , dull plot", "it rains", "nobody expected the ending to be this good , honestly",
    "bad", "good", "the cast does what it can with a script that goes nowhere slowly",
    "a gem", "two hours i will never get back",
]


@pytest.fixture(scope="module")
def spiky() -> Path:
    """The committed tiny artifact: a 4-layer BERT whose ramps give confident, varied predictions, so exits
    differ per sample (scripts/make_tiny_artifact.py). Tests that modify it work on a copy."""
    return TINY_ARTIFACT


@pytest.fixture(scope="module")
def spiky_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model re-made with its PyTorch checkpoint kept, for the reference comparisons."""
    pytest.importorskip("torch")
    from make_tiny_artifact import make

    return make(tmp_path_factory.mktemp("spiky") / "art", include_checkpoint=True)


class CountingBackend(OrtBackend):
    """Tracks engine bytes held and checks the budget on every load."""

    def __init__(self, budget: int | None = None, fail_on: str | None = None, exc: type[BaseException] = NanotrtError):
        super().__init__()
        self.held = 0
        self.peak = 0
        self.budget = budget
        self.fail_on, self.exc = fail_on, exc
        self.lock = threading.Lock()
        self.closed = 0

    def load(self, manifest: Any, name: str) -> Any:
        if name == self.fail_on:
            raise self.exc(f"injected failure loading {name}")
        e = super().load(manifest, name)
        with self.lock:
            self.held += e.nbytes
            self.peak = max(self.peak, self.held)
            assert self.budget is None or self.held <= self.budget, (self.held, self.budget)
        return e

    def release(self, engine: Any) -> None:
        with self.lock:
            self.held -= engine.nbytes
        super().release(engine)

    def close(self) -> None:
        self.closed += 1
        super().close()


@pytest.mark.parametrize("fam", ["bert", "albert", "roberta"])
@pytest.mark.parametrize("prefetch", [True, False])
def test_smallest_budget_equals_all_resident(artifacts: dict[str, Path], fam: str, prefetch: bool) -> None:
    with Runner.from_artifact(artifacts[fam]) as r:
        full = r.predict(TEXTS, PAIRS, batch_size=2)
    smallest = tight_budget(artifacts[fam], TEXTS, PAIRS, 2)  # the largest graph + one batch's activations
    with Runner.from_artifact(artifacts[fam], memory_budget=smallest, prefetch=prefetch) as r:
        small = r.predict(TEXTS * 2, PAIRS * 2, batch_size=2, mode="latency")  # twice: swaps across batches too
        assert r.cache.stats.releases > 0
    np.testing.assert_allclose(small.logits[:3], full.logits, atol=1e-6)
    np.testing.assert_allclose(small.logits[3:], full.logits, atol=1e-6)


@pytest.mark.parametrize("budget", ["1layer", "2layers", "200KB", "all"])
def test_engine_bytes_never_exceed_budget(spiky: Path, budget: str) -> None:
    m = Manifest.load(spiky)
    be = CountingBackend()
    with Runner(m, be, memory_budget=budget, exit="patience=1", own_backend=True) as runner:
        be.budget = runner.budget  # checked by the backend itself on every load
        runner.predict(MANY, batch_size=3)
        runner.predict(MANY, batch_size=3)  # a second pass: "all" must load nothing again
        graphs = sum(runner.cache.sizes.values())
        if budget == "all":  # no budget: every graph loaded once and kept, nothing swapped
            assert runner.budget is None and not runner.streaming
            assert be.peak == runner.cache.stats.peak_resident_bytes == graphs
            assert runner.cache.stats.loads == len(runner.cache.sizes) and runner.cache.stats.releases == 0
        else:
            assert runner.budget is not None and runner.cache.stats.peak_total_bytes <= runner.budget
            assert be.peak <= runner.budget
            assert runner.cache.stats.releases > 0 or budget != "200KB"  # below the model's 230 KB: swaps
    assert be.held == 0  # everything released on close


def test_budget_too_small_names_minimum(spiky: Path) -> None:
    with pytest.raises(NanotrtError, match="use at least"):
        Runner.from_artifact(spiky, memory_budget="10KB")
    with pytest.raises(NanotrtError, match="cannot read memory size"):
        Runner.from_artifact(spiky, memory_budget="lots")


@pytest.mark.parametrize("spec", ["patience=1", "patience=2", "entropy=0.005", "maxprob=0.999", "depth=2", "none"])
def test_exits_match_pytorch_reference(spiky_ckpt: Path, spec: str) -> None:
    import torch
    from nanotrt.pipeline.model import load_model
    from nanotrt.pipeline.reference import reference_exit

    model = load_model(spiky_ckpt / "checkpoint")
    with Runner.from_artifact(spiky_ckpt, exit=spec, memory_budget="2layers") as r:
        res = r.predict(MANY, batch_size=5)
        enc = [r.tokenizer([t]) for t in MANY]
    policy = parse_exit(spec)
    layers, labels = [], []
    for e in enc:
        logits, layer = reference_exit(model, *(torch.from_numpy(e[k]) for k in
                                                ("input_ids", "attention_mask", "token_type_ids")), policy)
        layers.append(layer)
        labels.append(int(logits.argmax()))
    assert res.exit_layers.tolist() == layers
    assert res.label_ids.tolist() == labels
    if spec.startswith("patience"):
        assert len(set(layers)) > 1, "fixture should make samples exit at different layers"


@pytest.mark.parametrize("spec", ["patience=1", "entropy=0.05"])
def test_batch_compaction_equals_one_by_one(spiky: Path, spec: str) -> None:
    with Runner.from_artifact(spiky, exit=spec) as r:
        batched = r.predict(MANY, batch_size=len(MANY))
        single = r.predict(MANY, batch_size=1)
    assert batched.exit_layers.tolist() == single.exit_layers.tolist()
    assert batched.label_ids.tolist() == single.label_ids.tolist()
    np.testing.assert_allclose(batched.logits, single.logits, atol=1e-5)
    assert batched.stats.layers_executed < len(MANY) * 4  # some rows really left early


def test_torch_backend_matches_onnxruntime(spiky_ckpt: Path) -> None:
    with Runner.from_artifact(spiky_ckpt, backend="torch", exit="patience=1") as r:
        ref = r.predict(MANY, batch_size=4)
    with Runner.from_artifact(spiky_ckpt, exit="patience=1") as r:
        ours = r.predict(MANY, batch_size=4)
    assert ref.exit_layers.tolist() == ours.exit_layers.tolist()
    np.testing.assert_allclose(ref.logits, ours.logits, atol=1e-4)


def _prefetch_threads() -> int:
    return sum(t.name.startswith("nanotrt-prefetch") for t in threading.enumerate())


@pytest.mark.parametrize("exc", [NanotrtError, KeyboardInterrupt])
def test_load_failure_and_interrupt_leave_runner_usable(spiky: Path, exc: type[BaseException]) -> None:
    m = Runner.from_artifact(spiky).manifest
    be = CountingBackend(fail_on="layer_02", exc=exc)
    runner = Runner(m, be, memory_budget="2layers", prefetch=True)
    with pytest.raises(exc):
        runner.predict(MANY[:3], batch_size=3)
    assert all(s.in_use == 0 for s in runner.cache.slots.values())
    be.fail_on = None
    res = runner.predict(MANY[:3], batch_size=3)  # same process, same runner, works again
    assert len(res.predictions) == 3
    runner.close()
    assert _prefetch_threads() == 0 and be.held == 0


def test_corrupted_engine_mid_run(spiky: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(spiky, art)
    with Runner.from_artifact(art, memory_budget=tight_budget(art, MANY[:4], None, 1)) as r:
        good = r.predict(MANY[:4])
        layer = art / "graphs" / "layer_02.onnx"
        original = layer.read_bytes()
        layer.write_bytes(original[:100] + b"\0" * 64 + original[164:])
        with pytest.raises(NanotrtError, match="sha256"):
            r.predict(MANY[:4])
        layer.write_bytes(original)
        again = r.predict(MANY[:4])
    np.testing.assert_allclose(good.logits, again.logits, atol=1e-6)


def test_predict_imports_neither_torch_nor_transformers(spiky: Path) -> None:
    code = (
        "import sys\n"
        "from nanotrt.runtime.runner import Runner\n"
        f"r = Runner.from_artifact({str(spiky)!r}, memory_budget='2layers', exit='patience=2')\n"
        "r.predict(['hello there', 'a second text'], batch_size=2)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_memory_comes_back_after_release(tmp_path: Path) -> None:
    """Process RSS drops when the engines are released (arena disabled, malloc_trim). Measured in a fresh
    child process: in the test process, heap freed by earlier tests would absorb the loads."""
    import json

    pytest.importorskip("torch")
    from nanotrt.pipeline.export import export_model
    from tinymodels import make_tiny
    from transformers import AutoConfig, AutoModelForSequenceClassification

    d = make_tiny("bert", tmp_path / "m", layers=1)  # tokenizer files; weights replaced by a wider model
    cfg = AutoConfig.for_model("bert", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                               intermediate_size=2048, vocab_size=30522, max_position_embeddings=128)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(d))
    art = export_model(d, tmp_path / "art", check=False, include_checkpoint=False).root
    code = (
        "import json, psutil\n"
        "from nanotrt.runtime.runner import Runner\n"
        "p = psutil.Process()\n"
        f"r = Runner.from_artifact({str(art)!r}, prefetch=False)\n"
        "r.predict(['warm up the allocator'])\n"
        "r.cache.clear()\n"
        "before = p.memory_info().rss\n"
        "r.predict(['load everything'])\n"
        "engine_bytes, loaded = r.cache.resident_bytes, p.memory_info().rss\n"
        "r.cache.clear()\n"
        "print(json.dumps([before, loaded, p.memory_info().rss, engine_bytes]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, loaded, after, engine_bytes = json.loads(out.stdout.strip().splitlines()[-1])
    assert engine_bytes > 40e6
    assert loaded - before > 0.8 * engine_bytes, (before, loaded, engine_bytes)
    assert loaded - after > 0.8 * engine_bytes, (before, loaded, after)


# --- lifecycle: ownership, failed construction, close --------------------------------------------------

def test_runner_closes_only_the_backend_it_made(spiky: Path) -> None:
    made: list[CountingBackend] = []
    register_backend("counting", lambda **o: made.append(CountingBackend(**o)) or made[-1])
    with Runner.from_artifact(spiky, backend="counting") as r:  # made from a name: the runner's
        r.predict(MANY[:2])
    assert made[0].closed == 1
    mine = CountingBackend()
    with Runner.from_artifact(spiky, backend=mine) as r:  # passed in: stays the caller's
        r.predict(MANY[:2])
    assert mine.closed == 0 and mine.held == 0  # engines released, backend left open
    with Runner(Manifest.load(spiky), mine) as r:
        r.predict(MANY[:2])
    assert mine.closed == 0


@pytest.mark.parametrize("bad", [{"memory_budget": "10KB"}, {"exit": "deadline=5ms,bogus=1"}, {"variant": "ort-int8"}])
def test_failed_construction_releases_what_it_made(spiky: Path, bad: dict[str, Any]) -> None:
    made: list[CountingBackend] = []
    register_backend("counting", lambda **o: made.append(CountingBackend(**o)) or made[-1])
    with pytest.raises(NanotrtError):
        Runner.from_artifact(spiky, backend="counting", **bad)
    assert made[0].closed == 1  # made by from_artifact: released with the error
    mine = CountingBackend()
    with pytest.raises(NanotrtError):
        Runner.from_artifact(spiky, backend=mine, **bad)
    assert mine.closed == 0  # the caller's: left to the caller
    assert _prefetch_threads() == 0


def test_closed_runner_refuses_calls_and_closes_once(spiky: Path) -> None:
    made: list[CountingBackend] = []
    register_backend("counting", lambda **o: made.append(CountingBackend(**o)) or made[-1])
    r = Runner.from_artifact(spiky, backend="counting", memory_budget="2layers")
    enc = r.tokenizer(MANY[:2])
    r.predict(MANY[:2])
    r.close()
    r.close()  # idempotent
    assert made[0].closed == 1 and made[0].held == 0
    with pytest.raises(NanotrtError, match="closed"):
        r.predict(MANY[:2])
    with pytest.raises(NanotrtError, match="closed"):
        r.run_encoded(enc)
    with r:  # a with-block on a closed runner closes nothing twice
        pass
    assert made[0].closed == 1


@pytest.mark.parametrize("threads", [0, -1, 5000, 2.5])
def test_threads_out_of_range_is_one_clear_error(threads: Any) -> None:
    with pytest.raises(NanotrtError, match=r"threads=.* out of range: use 1\.\.\d+"):
        get_backend("onnxruntime", threads=threads)


def test_cli_threads_out_of_range(spiky: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "nanotrt", "predict", str(spiky), "a text", "--threads", "5000"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "out of range" in p.stderr, p.stderr
