"""Layer-wise calibration data: the inputs each graph sees when the FP32 prefix runs on task sentences.

Sentences come from the task's **train** split only (never dev). The FP32 artifact is run once, in
length-sorted batches; the feeds of every graph (embeddings, each layer, each ramp) are kept, so the
calibration inputs of layer i are exactly the hidden states the FP32 embeddings and layers 0..i-1 produce.
The same feeds serve ONNX Runtime's quantize_static and TensorRT's legacy calibrator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.progress import progress
from nanotrt.runtime.tokenize import Tokenizer

Feeds = dict[str, np.ndarray]


@dataclass
class CalibrationSet:
    task: str
    split: str
    size: int
    feeds: dict[str, list[Feeds]] = field(default_factory=dict)  # graph name -> batches of feeds

    def batches(self, name: str) -> list[Feeds]:
        return self.feeds[name]


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
    """Run the FP32 graphs on the sentences of ``split`` (a train split) and keep every graph's inputs."""
    import onnxruntime as ort

    if len(split) == 0:
        raise NanotrtError("no calibration sentences: use --calib-size N with N >= 1 (default 512)")

    tok = Tokenizer.from_manifest(artifact)
    sched = artifact.schedule(variant)
    table = artifact.word_table()
    assert table is not None, "an exported artifact has its word table"
    sessions = {n: ort.InferenceSession(str(artifact.verify(n)), providers=["CPUExecutionProvider"])
                for n in sched.names() if artifact.graphs[n].get("format") == "onnx"}

    def run(name: str, feeds: Feeds) -> np.ndarray:
        s = sessions[name]
        return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]

    out = CalibrationSet(task, "train", len(split))
    for n in sched.names():
        out.feeds[n] = []
    order = batch_order(split)
    with progress() as bar:
        job = bar.add_task("calibration data", total=len(order), info=f"{task} train")
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([split.texts[i] for i in idx], [split.pairs[i] for i in idx] if split.pairs else None)
            feeds = {**enc, "inputs_embeds": np.ascontiguousarray(table[enc["input_ids"]], dtype=np.float32)}
            out.feeds[sched.embeddings].append(feeds)
            hidden = run(sched.embeddings, feeds)
            for lay, ramp in zip(sched.layers, sched.ramps, strict=True):
                f = {"hidden_states": hidden, "attention_mask": enc["attention_mask"]}
                out.feeds[lay].append(f)
                hidden = run(lay, f)
                out.feeds[ramp].append({"hidden_states": hidden, "attention_mask": enc["attention_mask"]})
            bar.advance(job, len(idx))
    return out
