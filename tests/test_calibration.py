"""Calibration feeds made graph by graph: the same feeds as one eager FP32 walk keeping every graph's, in the
same order, while only the asked graph's stay resident."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from nanotrt.calibration.readers import Feeds, batch_order, collect
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.tokenize import Tokenizer

WORDS = "the film is a triumph and i hated every minute of it , what a waste of time but a gem".split()


@dataclass
class Sentences:
    texts: list[str]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def sentences(n: int) -> Sentences:
    rng = np.random.default_rng(0)
    return Sentences([" ".join(rng.choice(WORDS, size=int(rng.integers(2, 15)))) for _ in range(n)])


def eager_feeds(m: Manifest, split: Sentences, batch_size: int) -> dict[str, list[Feeds]]:
    """Every graph's feeds from one walk per batch, all kept: what calibration held before it streamed."""
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    sched, tok = m.schedule("fp32"), Tokenizer.from_manifest(m)
    table = m.word_table()
    sess = {n: ort.InferenceSession(str(m.verify(n)), session_options(ort)) for n in sched.names()}

    def run(name: str, f: Feeds) -> np.ndarray:
        return sess[name].run(None, {i.name: f[i.name] for i in sess[name].get_inputs()})[0]

    out: dict[str, list[Feeds]] = {n: [] for n in sched.names()}
    order = batch_order(split)
    for s in range(0, len(order), batch_size):
        enc = tok([split.texts[i] for i in order[s:s + batch_size]])
        feeds = {**enc, "inputs_embeds": np.ascontiguousarray(table[enc["input_ids"]], dtype=np.float32)}
        out[sched.embeddings].append(feeds)
        hidden = run(sched.embeddings, feeds)
        for lay, ramp in zip(sched.layers, sched.ramps, strict=True):
            out[lay].append({"hidden_states": hidden, "attention_mask": enc["attention_mask"]})
            hidden = run(lay, out[lay][-1])
            out[ramp].append({"hidden_states": hidden, "attention_mask": enc["attention_mask"]})
    return out


@pytest.mark.parametrize("fam", ["bert", "albert"])  # ALBERT: one layer graph used at every depth
def test_streamed_feeds_equal_the_eager_walk(artifacts: dict[str, Path], fam: str) -> None:
    m = Manifest.load(artifacts[fam])
    split = sentences(21)
    ref = eager_feeds(m, split, 4)
    calib = collect(m, split, "test", batch_size=4)
    names = m.schedule("fp32").names()
    for name in [*names, *reversed(names), names[1]]:  # the build's order, backwards (restarts), a repeat
        got = calib.batches(name)
        assert len(got) == len(ref[name])
        for g, r in zip(got, ref[name], strict=True):
            assert g.keys() == r.keys()
            for k in r:
                np.testing.assert_allclose(g[k], r[k], atol=1e-6)


def test_only_the_asked_graphs_feeds_stay_resident(artifacts: dict[str, Path]) -> None:
    """Walking the build's order, the feeds of a graph two steps back are gone (freed, not cached)."""
    m = Manifest.load(artifacts["bert"])
    sched = m.schedule("fp32")
    calib = collect(m, sentences(12), "test", batch_size=4)
    refs: list[list[weakref.ref[np.ndarray]]] = []
    for name in sched.layers:
        refs.append([weakref.ref(f["hidden_states"]) for f in calib.batches(name)])
        gc.collect()
        if len(refs) > 2:
            assert all(r() is None for r in refs[-3]), "an earlier graph's feeds are still held"
    assert len(refs) == len(sched.layers) >= 3
    last = calib.batches(sched.layers[-1])
    assert calib.resident_bytes == sum(f[k].nbytes for f in last for k in f)  # that graph's feeds, nothing else


def test_unknown_graph_and_empty_split(artifacts: dict[str, Path]) -> None:
    m = Manifest.load(artifacts["bert"])
    with pytest.raises(NanotrtError, match="not in the calibrated schedule"):
        collect(m, sentences(3), "test").batches("no_such_graph")
    with pytest.raises(NanotrtError, match="--calib-size"):
        collect(m, sentences(0), "test")
