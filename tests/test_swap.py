"""Swap variants (`nanotrt build --swap`, issue 21): one session per layer structure, each graph's weights in a
mapped file fed as inputs. Same logits as the variants they are made from, every family and precision; the
budget holds with mapped pages counted; prefetch changes nothing; a damaged weight file is caught at its next
load; a streamed run builds no session per swap."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TEXTS
from nanotrt.engines.onnxruntime import OrtBackend, SwapEngine
from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner

FIX = Path(__file__).parent / "fixtures" / "glue"
SENTS = [*TEXTS, "the cat sat on the mat", "colourless green ideas sleep furiously", "he did n't went home", "ok"]
SOURCES = ("ort-fp32", "ort-int8", "ort-int8-dynamic", "ort-fp32-fused", "ort-int8-fused", "ort-int8-dynamic-fused")
ATOL = 1e-6


@pytest.fixture(scope="module")
def swapped(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family built to FP32, INT8 static and dynamic, fused, and the swap variant of each."""
    from nanotrt.pipeline.build import build

    out = {}
    for fam, src in artifacts.items():
        art = tmp_path_factory.mktemp(f"swap-{fam}") / "art"
        shutil.copytree(src, art)
        build(art, int8=True, dynamic=True, fused=True, swap=True, calib_task="cola", calib_size=32, data_dir=FIX)
        out[fam] = art
    return out


def tight(art: Path, variant: str) -> int:
    """The largest graph of the variant plus the activations of SENTS in pairs: nearly every step swaps."""
    with Runner.from_artifact(art, variant=variant) as r:
        acts = max(r.acts.block([r.tokenizer(SENTS[s:s + 2])["input_ids"].shape]) for s in range(0, len(SENTS), 2))
        return r.reserved + r.largest + acts


def logits(art: Path, variant: str, **kw: Any) -> Any:
    with Runner.from_artifact(art, variant=variant, exit="none", **kw) as r:
        res = r.predict(SENTS, batch_size=2, mode="latency")
        res.stats.cache["sessions"] = r.backend.sessions_created  # type: ignore[attr-defined]
        return res


@pytest.mark.parametrize("source", SOURCES)
def test_swap_matches_its_source(swapped: dict[str, Path], family: str, source: str) -> None:
    """Every ramp's logits as the session variant's, all resident and streamed under a tight budget."""
    art = swapped[family]
    ref = logits(art, source)
    for budget in ("all", tight(art, source + "-swap")):
        res = logits(art, source + "-swap", memory_budget=budget)
        np.testing.assert_allclose(res.ramp_logits, ref.ramp_logits, atol=ATOL, rtol=0)
        assert res.exit_layers.tolist() == ref.exit_layers.tolist()
    assert res.stats.cache["loads"] > len(set(Manifest.load(art).schedule(source + "-swap").names()))  # it swapped


def test_layers_share_one_structure_and_swaps_build_no_session(swapped: dict[str, Path], family: str) -> None:
    """All layers (ALBERT: its one shared layer) run on one session; a streamed run builds only the structure
    sessions however many times it swaps."""
    m = Manifest.load(swapped[family])
    for source in ("ort-fp32", "ort-int8-dynamic"):
        sched = m.schedule(source + "-swap")
        layers = {m.graphs[n]["structure"] for n in sched.layers}
        ramps = {m.graphs[n]["structure"] for n in sched.ramps}
        assert len(layers) == 1 and len(ramps) == 1, (layers, ramps)
        assert len(set(sched.layers)) == (1 if family == "albert" else m.num_layers)
        res = logits(swapped[family], source + "-swap", memory_budget=tight(swapped[family], source + "-swap"))
        assert res.stats.cache["loads"] > 2 * m.num_layers
        assert res.stats.cache["sessions"] == 3  # embeddings, layer, ramp structures


class MapAudit(OrtBackend):
    """At every load and run: the weight files this process maps (from /proc/self/maps, what the kernel holds)
    plus the runner's reserved activations fit the engine budget, and released engines are unmapped."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.runner: Runner | None = None
        self.lock = threading.Lock()
        self.worst = 0
        self.dropped: list[SwapEngine] = []

    def mapped(self) -> int:
        assert self.runner is not None
        m = self.runner.manifest
        folder = str((m.root / m.data["variants"][self.runner.variant]["dir"]).resolve())  # not the word table
        total = 0
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[5].startswith(folder) and parts[5].endswith(".npy"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                total += hi - lo
        return total

    def check(self) -> None:
        r = self.runner
        assert r is not None and r.budget is not None
        used = self.mapped() + r.cache.activation_bytes
        self.worst = max(self.worst, used)
        page = 4096 * len(r.cache.slots)  # a mapping is whole pages; the manifest counts the file's bytes
        assert used <= r.budget - r.reserved + page, (used, r.budget)

    def load(self, manifest: Any, name: str) -> Any:
        e = super().load(manifest, name)
        with self.lock:
            self.check()
        return e

    def run(self, engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().run(engine, feeds)
        with self.lock:
            self.check()
        return out

    def release(self, engine: Any) -> None:
        mm = engine.mapping
        super().release(engine)
        assert mm is None or mm.closed  # munmapped, not left for the garbage collector


@pytest.mark.parametrize("source", ["ort-fp32", "ort-int8-fused"])
def test_budget_holds_with_mapped_pages(swapped: dict[str, Path], source: str) -> None:
    art = swapped["bert"]
    budget = tight(art, source + "-swap") + 2**10
    be = MapAudit()
    r = Runner(Manifest.load(art), be, memory_budget=budget, variant=source + "-swap", exit="none")
    be.runner = r
    with r:
        assert r.streaming
        for batch in (1, 3):
            r.predict(SENTS, batch_size=batch)
        assert be.worst > 0
        assert r.cache.stats.peak_total_bytes <= budget - r.reserved


def test_prefetch_and_populate_change_nothing(swapped: dict[str, Path]) -> None:
    art = swapped["roberta"]
    variant = "ort-int8-swap"
    budget = tight(art, variant)
    runs = {}
    for prefetch in (True, False):
        for populate in (True, False):
            with Runner(Manifest.load(art), OrtBackend(populate=populate), memory_budget=budget, prefetch=prefetch,
                        variant=variant, exit="none") as r:
                runs[prefetch, populate] = r.predict(SENTS, batch_size=2).ramp_logits
                # swap graphs are prefetched only when the prefetch thread has pages to populate
                assert (r.cache.stats.prefetches > 0) == (prefetch and populate)
    ref = runs[True, True]
    for got in runs.values():
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "bytes flipped", "replaced by another layer's"])
def test_weight_file_damaged_while_streaming(swapped: dict[str, Path], tmp_path: Path, damage: str) -> None:
    """Caught at the graph's next load (sha256), named; the same runner works again once the file is back."""
    art = tmp_path / "art"
    shutil.copytree(swapped["bert"], art)
    m = Manifest.load(art)
    variant = "ort-fp32-swap"
    sched = m.schedule(variant)
    target, other = m.path(sched.layers[1]), m.path(sched.layers[2])
    original = target.read_bytes()
    with Runner.from_artifact(art, variant=variant, memory_budget=tight(art, variant)) as r:
        good = r.predict(SENTS[:3])
        assert sched.layers[1] not in r.cache.slots  # not mapped now: the damage cannot hit a live mapping
        if damage == "deleted":
            target.unlink()
        elif damage == "truncated":
            target.write_bytes(original[: len(original) // 3])
        elif damage == "bytes flipped":
            target.write_bytes(original[:300] + bytes(b ^ 0xFF for b in original[300:340]) + original[340:])
        else:
            target.write_bytes(other.read_bytes())
        with pytest.raises(NanotrtError, match=rf"{target.name}"):
            r.predict(SENTS[:3])
        assert all(s.in_use == 0 for s in r.cache.slots.values())
        target.write_bytes(original)
        again = r.predict(SENTS[:3])
    np.testing.assert_array_equal(again.logits, good.logits)


def test_weight_file_wrong_layout_is_one_clear_error(swapped: dict[str, Path], tmp_path: Path) -> None:
    """With verification off a file that is not the expected flat array is refused, not read out of range."""
    art = tmp_path / "art"
    shutil.copytree(swapped["bert"], art)
    m = Manifest.load(art)
    name = m.schedule("ort-fp32-swap").layers[0]
    np.save(m.path(name), np.zeros(10, np.float32))
    with pytest.raises(NanotrtError, match="cannot map weight file .*not the flat array"):
        OrtBackend(verify=False, prepack=False).load(m, name)


def test_swap_is_registered_for_every_ort_source() -> None:
    for source in SOURCES:
        spec = registry.get(source + "-swap")
        assert spec.kind == "swap" and spec.source == source and spec.backend == "onnxruntime"
        assert spec.precision == registry.get(source).precision
        assert spec.quantization == registry.get(source).quantization
    names = {s.name for s in registry.build_targets("onnxruntime", False, True, True, True, swap=True)}
    assert {s + "-swap" for s in SOURCES} <= names
    assert not any(s.kind == "swap" for s in registry.build_targets("onnxruntime", False, True, True, True))


def test_refit_model_of_a_structure_is_each_of_its_graphs(swapped: dict[str, Path]) -> None:
    """The TensorRT refit contract (one plan per structure, refitted per graph by weight name), checked on ONNX
    Runtime: the structure with graph k's weights as initializers computes graph k."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import Layout, map_weights, session_options
    from nanotrt.pipeline.swap_build import refit_model

    art = swapped["distilbert"]
    m = Manifest.load(art)
    rng = np.random.default_rng(0)
    feeds = {"hidden_states": rng.standard_normal((2, 5, int(m.data["hidden_size"]))).astype(np.float32),
             "attention_mask": np.array([[1] * 5, [1] * 3 + [0] * 2], np.int64)}
    so = session_options(ort)  # also when an earlier test made ORT's process-wide thread pool
    so.log_severity_level = 3
    for source in ("ort-fp32", "ort-int8"):
        for swap, ref in zip(m.schedule(source + "-swap").layers, m.schedule(source).layers, strict=True):
            s = m.graphs[m.graphs[swap]["structure"]]
            _, w = map_weights(m.path(swap), Layout.of(s), populate=False)
            model = refit_model(m.root / s["file"], s["weights"], w)
            got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
            want = ort.InferenceSession(str(m.path(ref)), so, providers=["CPUExecutionProvider"]).run(None, feeds)
            np.testing.assert_allclose(got[0], want[0], atol=ATOL, rtol=0)


def test_all_resident_runs_the_prepacked_source_graphs(swapped: dict[str, Path]) -> None:
    """When nothing is swapped, a swap variant runs the built graphs it was made from (ORT prepacks their
    weights: faster than weights fed as inputs); streamed, it maps its weight files."""
    art = swapped["bert"]
    m = Manifest.load(art)
    with Runner.from_artifact(art, variant="ort-fp32-swap") as r:
        r.predict(SENTS[:2])
        engines = [s.engine for s in r.cache.slots.values()]
        assert engines and not any(isinstance(e, SwapEngine) for e in engines)
        assert r.backend.sessions_created == 3 + len(set(m.schedule("ort-fp32").names()))  # type: ignore[attr-defined]
    with Runner.from_artifact(art, variant="ort-fp32-swap", memory_budget=tight(art, "ort-fp32-swap")) as r:
        r.predict(SENTS[:2])
        assert all(isinstance(s.engine, SwapEngine) for s in r.cache.slots.values() if s.engine is not None)
