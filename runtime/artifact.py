"""The artifact directory and its ``manifest.json``: the only contract between export, build and run.

Layout::

    manifest.json
    tokenizer/tokenizer.json (+ the original tokenizer files)
    graphs/embeddings.onnx, graphs/layer_00.onnx, ..., graphs/ramp_00.onnx, ...
    <built engines, e.g. ort-int8/layer_00.onnx, trt-fp16/layer_00.plan>

``graphs`` maps a graph name to its entry (file, sha256, bytes, precision, I/O signature).
``variants`` maps a variant name ("fp32", "ort-int8", "trt-fp16", ...) to a full schedule:
which graph runs the embeddings, each layer, each ramp. ALBERT's schedule names one layer graph N times.
Nothing downstream guesses file names; it reads this file. No torch import here (device side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import sha256_file, write_json

FORMAT = "nanotrt-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Which variant runs when none is named: per (backend, precision), the first of these the artifact has.
# Built before exported: `nanotrt build` optimizes offline and stores weights as external data, so a
# layer loads several times faster per swap (benchmarks/results/streaming_memory.md). For INT8 the
# static QDQ build (calibrated, graphs over the error tolerance kept in FP32) before ORT dynamic.
# Precision is never changed silently: a precision the artifact lacks is an error naming the build.
VARIANT_PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("onnxruntime", "fp32"): ("ort-fp32", "fp32"),
    ("onnxruntime", "fp16"): ("ort-fp16",),
    ("onnxruntime", "int8"): ("ort-int8", "ort-int8-dynamic"),
    ("tensorrt", "fp32"): ("trt-fp32",),
    ("tensorrt", "fp16"): ("trt-fp16",),
    ("tensorrt", "int8"): ("trt-int8",),
    ("torch", "fp32"): ("fp32",),  # the eager reference runs the checkpoint; the schedule only names roles
}
_BUILD_FLAGS = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --calib-task TASK"}


@dataclass
class Schedule:
    embeddings: str
    layers: list[str]
    ramps: list[str]

    def names(self) -> list[str]:
        return list(dict.fromkeys([self.embeddings, *self.layers, *self.ramps]))


class Manifest:
    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = Path(root)
        self.data = data
        self._verified: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) when its hash matched

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise NanotrtError(f"artifact dir '{root}' does not exist: create it with `nanotrt export MODEL_DIR -o {root}`")
        if not path.is_file():
            raise NanotrtError(f"'{root}' has no {MANIFEST}: it is not a nanotrt artifact (run `nanotrt export`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise NanotrtError(f"{path} is not valid JSON ({e}): re-run `nanotrt export`") from None
        if data.get("format") != FORMAT:
            raise NanotrtError(f"{path} is not a nanotrt manifest: re-run `nanotrt export`")
        if data.get("format_version") != FORMAT_VERSION:
            raise NanotrtError(
                f"{path} has format version {data.get('format_version')}, this nanotrt reads version "
                f"{FORMAT_VERSION}: re-export the model with this version of nanotrt"
            )
        return cls(root, data)

    @property
    def family(self) -> str:
        return str(self.data["family"])

    @property
    def num_layers(self) -> int:
        return int(self.data["num_layers"])

    @property
    def labels(self) -> list[str]:
        return list(self.data["labels"])

    @property
    def task_type(self) -> str:
        return str(self.data["task_type"])

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.data["tokenizer"])

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.data["graphs"]

    @property
    def variants(self) -> list[str]:
        return list(self.data["variants"])

    def schedule(self, variant: str = "fp32") -> Schedule:
        v = self.data["variants"].get(variant)
        if v is None:
            raise NanotrtError(
                f"artifact '{self.root}' has no '{variant}' variant (it has: {', '.join(self.variants)}): "
                "build it with `nanotrt build`"
            )
        return Schedule(v["embeddings"], list(v["layers"]), list(v["ramps"]))

    def variant_choices(self, precision: str = "fp32", backend: str = "onnxruntime") -> list[str]:
        """The variants of this artifact that run ``precision`` on ``backend``, best first
        (``VARIANT_PREFERENCE``)."""
        known = {p for _, p in VARIANT_PREFERENCE}
        if precision not in known:
            raise NanotrtError(f"unknown precision '{precision}': use one of {', '.join(sorted(known))}")
        if (backend, precision) not in VARIANT_PREFERENCE:
            raise NanotrtError(f"backend '{backend}' does not run {precision}: pick another precision or "
                               "name a variant (--variant)")
        return [v for v in VARIANT_PREFERENCE[backend, precision] if v in self.data["variants"]]

    def best_variant(self, precision: str = "fp32", backend: str = "onnxruntime") -> str:
        """The variant a runner uses when none is named: the best of ``variant_choices``."""
        choices = self.variant_choices(precision, backend)
        if not choices:
            wanted = " or ".join(VARIANT_PREFERENCE[backend, precision])
            flags = (" --backend tensorrt" if backend == "tensorrt" else "") + _BUILD_FLAGS[precision]
            raise NanotrtError(f"artifact '{self.root}' has no {precision} variant for {backend} (wanted {wanted}; "
                               f"it has: {', '.join(self.variants)}): build it with `nanotrt build {self.root}{flags}`")
        return choices[0]

    def path(self, name: str) -> Path:
        return self.root / self.graphs[name]["file"]

    def verify(self, name: str) -> Path:
        """Check that the graph file (and its external-data file) exist and match their sha256 in the
        manifest; return the graph's path. Re-hashes only when a file's size or mtime changed."""
        entry = self.graphs[name]
        p = self.root / entry["file"]
        parts = [(p, entry.get("file_bytes", entry["bytes"]), entry["sha256"])]
        if "data" in entry:
            parts.append((self.root / entry["data"]["file"], entry["data"]["bytes"], entry["data"]["sha256"]))
        for f, size, sha in parts:
            if not f.is_file():
                raise NanotrtError(f"graph file {f} listed in the manifest is missing: re-run `nanotrt export`")
            st = f.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._verified.get(str(f)) == stamp:  # hashing 28 MB per swap would cost more than the load
                continue
            if st.st_size != size or sha256_file(f) != sha:
                self._verified.pop(str(f), None)
                raise NanotrtError(
                    f"graph file {f} does not match its sha256 in the manifest (corrupted or modified): "
                    "re-run `nanotrt export` / `nanotrt build`"
                )
            self._verified[str(f)] = stamp
        return p

    # --- writing ---------------------------------------------------------------------------
    def add_graph(self, name: str, file: Path, **fields: Any) -> dict[str, Any]:
        rel = file.relative_to(self.root).as_posix()
        entry = {"file": rel, "sha256": sha256_file(file), "bytes": file.stat().st_size, **fields}
        data = file.with_name(file.name + ".data")  # ONNX external data (weights) beside the graph
        if data.is_file():
            n = data.stat().st_size
            entry["data"] = {"file": data.relative_to(self.root).as_posix(), "sha256": sha256_file(data), "bytes": n}
            entry["file_bytes"] = entry["bytes"]
            entry["bytes"] += n
        self.graphs[name] = entry
        return entry

    def set_variant(self, variant: str, schedule: Schedule, **info: Any) -> None:
        self.data["variants"][variant] = {
            "embeddings": schedule.embeddings, "layers": schedule.layers, "ramps": schedule.ramps, **info,
        }

    def save(self, root: Path | None = None) -> None:
        write_json(Path(root or self.root) / MANIFEST, self.data)


def new_manifest(root: Path, **fields: Any) -> Manifest:
    return Manifest(root, {"format": FORMAT, "format_version": FORMAT_VERSION, **fields,
                           "graphs": {}, "variants": {}})
