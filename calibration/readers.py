"""Layer-wise calibration data: the inputs each graph sees when the FP32 prefix runs on task sentences.

Sentences come from the task's **train** split only (never dev), tokenized once into length-sorted batches.
Feeds are made graph by graph, when a graph asks for them (``CalibrationSet.batches``): the FP32 walk
advances from the state it last reached, and only that graph's feeds are resident (the walk's frontier is
the same arrays), never every graph's at once: a BERT-large shape at 512 sentences x 128 tokens holds one
graph's 268 MB of hidden states instead of all 49 graphs' (13 GB). A graph earlier in the walk than the
frontier restarts it from the embeddings (the build asks for the layers, then the ramps: two walks).
The calibration inputs of layer i are exactly the hidden states the FP32 embeddings and layers 0..i-1
produce. They feed ONNX Runtime's quantize_static (static Q/DQ for the ORT CPU graphs and for TensorRT's
strongly typed INT8 networks) and the per-graph error checks of both; ``reader`` gives them in ORT's
``CalibrationDataReader`` shape (``get_next()`` returns a feed dict or None).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.tokenize import Tokenizer

Feeds = dict[str, np.ndarray]


class CalibrationSet:
    """The tokenized calibration batches of a task, and the FP32 walk that turns them into each graph's feeds."""

    def __init__(self, artifact: Manifest, encoded: list[Feeds], task: str, split: str, size: int,
                 variant: str = "fp32"):
        self.task, self.split, self.size = task, split, size
        self._m, self._encoded = artifact, encoded
        self._sched = artifact.schedule(variant)
        table = artifact.word_table()  # verified, shape-checked, never unpickled
        assert table is not None, "an exported artifact has its word table"
        self._table = table
        self._graph: str | None = None  # the one graph whose feeds are resident
        self._feeds: list[Feeds] = []
        self._state = -1  # hidden states held: after the embeddings (0) and ``_state`` layers; -1: none
        self._hidden: list[np.ndarray] = []

    def batches(self, name: str) -> list[Feeds]:
        """Graph ``name``'s calibration feeds, one dict per batch (a graph used at several depths, ALBERT's
        shared layer, gets every depth's, batch by batch)."""
        if name != self._graph:
            self._graph, self._feeds = None, []  # drop the previous graph's feeds before making these
            self._feeds, self._graph = self._make(name), name
        return self._feeds

    def reader(self, name: str, input_names: list[str], pad: bool = False) -> FeedReader:
        return FeedReader(self.batches(name), input_names, pad)

    @property
    def resident_bytes(self) -> int:
        """Bytes of feeds and walk state held now (arrays shared between them counted once)."""
        arrays = {id(a): a for f in self._feeds for a in f.values()} | {id(h): h for h in self._hidden}
        return sum(a.nbytes for a in arrays.values())

    def _make(self, name: str) -> list[Feeds]:
        sched = self._sched
        if name == sched.embeddings:
            return [self._token_feeds(enc) for enc in self._encoded]
        # layer i reads the state after i layers; ramp i the state after i + 1
        depths = sorted({i for i, n in enumerate(sched.layers) if n == name}
                        | {i + 1 for i, n in enumerate(sched.ramps) if n == name})
        if not depths:
            raise NanotrtError(f"graph {name} is not in the calibrated schedule")
        if depths[0] < self._state:
            self._state, self._hidden = -1, []  # behind the frontier: walk again from the embeddings
        per_depth = []
        for d in depths:
            self._advance(d)
            per_depth.append([{"hidden_states": h, "attention_mask": enc["attention_mask"]}
                              for h, enc in zip(self._hidden, self._encoded, strict=True)])
        return [f for batch in zip(*per_depth, strict=True) for f in batch]  # batch by batch, depths inside

    def _advance(self, depth: int) -> None:
        if self._state < 0:
            self._hidden = self._run(self._sched.embeddings, [self._token_feeds(enc) for enc in self._encoded])
            self._state = 0
        while self._state < depth:
            layer = self._sched.layers[self._state]
            self._hidden = self._run(layer, [{"hidden_states": h, "attention_mask": enc["attention_mask"]}
                                             for h, enc in zip(self._hidden, self._encoded, strict=True)])
            self._state += 1

    def _token_feeds(self, enc: Feeds) -> Feeds:
        return {**enc, "inputs_embeds": np.ascontiguousarray(self._table[enc["input_ids"]], dtype=np.float32)}

    def _run(self, name: str, feeds: list[Feeds]) -> list[np.ndarray]:
        """One FP32 graph over every batch; its session lives for this call only (one graph's weights held)."""
        import onnxruntime as ort
        from nanotrt.engines.onnxruntime import session_options

        sess = ort.InferenceSession(str(self._m.verify(name)), session_options(ort), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return [sess.run(None, {k: f[k] for k in names})[0] for f in feeds]


class FeedReader:
    """ORT ``CalibrationDataReader`` protocol (get_next / rewind) over stored feeds."""

    def __init__(self, batches: list[Feeds], input_names: list[str], pad: bool = False):
        self._batches = [{k: b[k] for k in input_names} for b in batches]
        if pad and self._batches:
            width = max(b[input_names[0]].shape[1] for b in self._batches)
            self._batches = [{k: _pad_seq(v, width) for k, v in b.items()} for b in self._batches]
        self._it: Iterator[Feeds] = iter(self._batches)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def _pad_seq(a: np.ndarray, width: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[1] = (0, width - a.shape[1])
    return np.pad(a, pad)


class Sentences(Protocol):
    """What calibration reads (a GLUE ``Split`` fits): texts and, for pair tasks, their second sentences.
    The caller reads the data, so calibration does not depend on the GLUE readers (offline side)."""

    @property
    def texts(self) -> Sequence[str]: ...

    @property
    def pairs(self) -> Sequence[str] | None: ...

    def __len__(self) -> int: ...


def batch_order(split: Sentences) -> np.ndarray:
    """Length-sorted order, ties in file order. A *stable* sort: numpy's default argsort breaks ties in an
    implementation-defined order (it can differ across numpy versions and SIMD dispatch), and the tie order
    decides the calibration batches, hence their padding and activation ranges, hence the INT8 graphs."""
    return np.argsort([len(t) + len(p) for t, p in zip(split.texts, split.pairs or [""] * len(split), strict=True)],
                      kind="stable")


def collect(artifact: Manifest, split: Sentences, task: str, batch_size: int = 16,
            variant: str = "fp32") -> CalibrationSet:
    """The calibration set of ``split`` (a train split): its sentences tokenized in length-sorted batches;
    each graph's feeds are made when it asks (``CalibrationSet.batches``)."""
    if len(split) == 0:
        raise NanotrtError("no calibration sentences: use --calib-size N with N >= 1 (default 512)")
    tok = Tokenizer.from_manifest(artifact)
    order = batch_order(split)
    encoded = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        encoded.append(tok([split.texts[i] for i in idx], [split.pairs[i] for i in idx] if split.pairs else None))
    return CalibrationSet(artifact, encoded, task, "train", len(split), variant)
