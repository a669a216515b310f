"""Layer-wise calibration data: the inputs each graph sees when the FP32 prefix runs on task sentences.

Sentences come from the task's **train** split only (never dev). The FP32 artifact is run once, in
length-sorted batches; the feeds of every graph (embeddings, each layer, each ramp) are kept, so the
calibration inputs of layer i are exactly the hidden states the FP32 embeddings and layers 0..i-1 produce.
The same feeds serve ONNX Runtime's quantize_static and TensorRT's legacy calibrator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nanotrt.pipeline.glue import Split, read_split
from nanotrt.pipeline.progress import progress
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
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


def sample_split(task: str, size: int, data_dir: str | Path | None = None, seed: int | None = None) -> Split:
    """``size`` train examples: the first ones in file order (``seed`` None), or a random sample drawn with
    numpy's PCG64 from ``seed`` (the same sentences on every machine and numpy version)."""
    if size < 1:
        raise NanotrtError(f"calibration size {size} is too small: use --calib-size N with N >= 1 (default 512)")
    if seed is None:
        return read_split(task, "train", data_dir, limit=size)
    full = read_split(task, "train", data_dir)
    idx = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(len(full))[:size])
    return Split(full.task, [full.texts[i] for i in idx], [full.pairs[i] for i in idx] if full.pairs else None,
                 full.labels[idx], full.skipped)


def batch_order(split: Split) -> np.ndarray:
    """Length-sorted order, ties in file order. A *stable* sort: numpy's default argsort breaks ties in an
    implementation-defined order (it differs across numpy versions and SIMD dispatch), which changed the
    calibration batches, hence their padding and activation ranges, hence the INT8 graphs, between machines."""
    return np.argsort([len(t) + len(p) for t, p in zip(split.texts, split.pairs or [""] * len(split), strict=True)],
                      kind="stable")


def collect(artifact: Manifest, task: str, size: int = 512, batch_size: int = 16, data_dir: str | Path | None = None,
            variant: str = "fp32", seed: int | None = None) -> CalibrationSet:
    """Run the FP32 graphs on ``size`` train sentences of ``task`` and keep every graph's inputs."""
    import onnxruntime as ort

    split = sample_split(task, size, data_dir, seed)
    tok = Tokenizer.from_manifest(artifact.root, artifact.tokenizer)
    sched = artifact.schedule(variant)
    table = np.load(artifact.verify(artifact.data["lookup"]), mmap_mode="r")
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
