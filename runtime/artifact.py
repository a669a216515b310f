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

from nanotrt.runtime import variants as registry
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import sha256_file, write_json

FORMAT = "nanotrt-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Step:
    """One engine call of the walk: ``graph`` takes the model from ``start`` layers done to ``end``; ``embeds``:
    it takes the token inputs (the embeddings run inside it); ``ramp``: it outputs the logits of ramp
    ``end - 1``, an exit point."""

    graph: str
    start: int
    end: int
    ramp: bool
    embeds: bool = False


@dataclass
class Schedule:
    """Which graph runs the embeddings, each layer and each ramp. A planned variant (`nanotrt plan`) adds
    ``segments``: graphs of consecutive layers (the first one with the embeddings inside), each ending in its
    ramp when exits are allowed there; ``layers[i]`` / ``ramps[i]`` then name the segment holding layer i."""

    embeddings: str
    layers: list[str]
    ramps: list[str]
    segments: list[dict[str, Any]] | None = None  # {"graph", "start", "end", "ramp"}

    def names(self) -> list[str]:
        return list(dict.fromkeys([self.embeddings, *self.layers, *self.ramps]))

    def steps(self) -> list[Step]:
        """The walk, in order: one entry per engine call."""
        if self.segments:
            segs = [Step(s["graph"], int(s["start"]), int(s["end"]), bool(s["ramp"]),
                         embeds=int(s["start"]) == 0 and s["graph"] == self.embeddings) for s in self.segments]
            # the embeddings run alone when the budget could not hold them with the first layer
            return segs if segs[0].embeds else [Step(self.embeddings, 0, 0, False, embeds=True), *segs]
        out = [Step(self.embeddings, 0, 0, False, embeds=True)]
        for i, (lay, ramp) in enumerate(zip(self.layers, self.ramps, strict=True)):
            if lay == ramp:  # fused layer + ramp (`nanotrt build --fused`): one call per layer
                out.append(Step(lay, i, i + 1, True))
            else:
                out += [Step(lay, i, i + 1, False), Step(ramp, i + 1, i + 1, True)]
        return out

    def live_ramps(self) -> list[int]:
        """Layers (0-based) whose ramp runs: where samples may exit."""
        return [s.end - 1 for s in self.steps() if s.ramp]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"embeddings": self.embeddings, "layers": self.layers, "ramps": self.ramps}
        if self.segments:
            out["segments"] = self.segments
        return out


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
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NanotrtError(f"{path} is not valid JSON ({e}): re-run `nanotrt export`") from e
        except OSError as e:
            raise NanotrtError(f"cannot read {path} ({e.strerror}): check its permissions") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise NanotrtError(f"{path} is not a nanotrt manifest: re-run `nanotrt export`")
        if data.get("format_version") != FORMAT_VERSION:
            raise NanotrtError(
                f"{path} has format version {data.get('format_version')}, this nanotrt reads version "
                f"{FORMAT_VERSION}: re-export the model with this version of nanotrt"
            )
        validate(data, path)
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
        info = dict(self.data["tokenizer"])
        lookup = self.data.get("lookup")
        if "vocab_size" not in info and lookup in self.graphs and "shape" in self.graphs[lookup]:
            info["vocab_size"] = int(self.graphs[lookup]["shape"][0])  # rows of the word-embedding table
        return info

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
        return Schedule(v["embeddings"], list(v["layers"]), list(v["ramps"]), v.get("segments"))

    def variant_choices(self, precision: str = "fp32", backend: str = "onnxruntime") -> list[str]:
        """The variants of this artifact that run ``precision`` on ``backend``, best first (the ranks of
        ``runtime/variants.py``)."""
        return registry.ranked(self.data["variants"], precision, backend)

    def best_variant(self, precision: str = "fp32", backend: str = "onnxruntime") -> str:
        """The variant a run uses when none is named: the best of ``variant_choices``. The one resolver:
        runner, profile, bench, build and the CLI all ask here."""
        choices = self.variant_choices(precision, backend)
        if not choices:
            wanted = registry.candidates(precision, backend)
            build = next((s for s in wanted if s.kind == "built"), wanted[0])
            raise NanotrtError(f"artifact '{self.root}' has no {precision} variant for {backend} (wanted "
                               f"{' or '.join(s.name for s in wanted)}; it has: {', '.join(self.variants)}): "
                               f"build it with `{build.command(self.root)}`")
        return choices[0]

    def resolve_variant(self, variant: str | None, precision: str = "fp32", backend: str = "onnxruntime",
                        budget: int | None = None) -> str:
        """``variant`` when named (it must exist and run on ``backend``), else ``best_variant``, passing over
        plans made for a larger memory budget than ``budget`` (bytes; None = unlimited)."""
        if variant is None:
            for v in self.variant_choices(precision, backend):
                planned = self.data["variants"][v].get("plan", {})
                if registry.get(v).kind != "plan" or budget is None or 0 < planned.get("budget_bytes", 0) <= budget:
                    return v
            return self.best_variant(precision, backend)
        self.schedule(variant)  # exists, else one error listing what does
        registry.check_runs_on(variant, backend)
        return variant

    def variant_graphs(self, variant: str) -> list[str]:
        """The graph entries a built variant owns (its folder's files)."""
        return [n for n, e in self.graphs.items() if e.get("variant") == variant]

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
            try:
                st = f.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                if self._verified.get(str(f)) == stamp:  # hashing 28 MB per swap would cost more than the load
                    continue
                ok = st.st_size == size and sha256_file(f) == sha
            except OSError as e:  # missing, or deleted / unreadable between the checks
                self._verified.pop(str(f), None)
                raise NanotrtError(f"graph file {f} listed in the manifest is missing or unreadable: "
                                   "re-run `nanotrt export` / `nanotrt build`") from e
            if not ok:
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
        self.data["variants"][variant] = {**schedule.to_json(), **info}

    def save(self, root: Path | None = None) -> None:
        write_json(Path(root or self.root) / MANIFEST, self.data)


# --- validation of a loaded (possibly hand-edited) manifest -----------------------------------
_TOP: dict[str, type | tuple[type, ...]] = {
    "family": str, "num_layers": int, "labels": list, "task_type": str, "tokenizer": dict, "graphs": dict,
    "variants": dict,
}
_TOKENIZER: dict[str, type | tuple[type, ...]] = {"file": str, "max_length": int, "pad_id": int, "pad_token": str}
_GRAPH: dict[str, type | tuple[type, ...]] = {"file": str, "sha256": str, "bytes": int}
_SCHEDULE: dict[str, type | tuple[type, ...]] = {"embeddings": str, "layers": list, "ramps": list}
TASK_TYPES = ("classification", "regression")


def _need(obj: dict[str, Any], keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    for key, typ in keys.items():
        if key not in obj:
            raise ValueError(f"{where}{key} is missing")
        value = obj[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise ValueError(f"{where}{key} should be {names}, not {type(value).__name__} {json.dumps(value)[:40]}")


def _check(data: dict[str, Any]) -> None:
    _need(data, _TOP, "")
    n = data["num_layers"]
    if n < 1:
        raise ValueError(f"num_layers is {n}, must be >= 1")
    if data["task_type"] not in TASK_TYPES:
        raise ValueError(f"task_type '{data['task_type']}' is not one of {', '.join(TASK_TYPES)}")
    labels = data["labels"]
    if not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError("labels should be a non-empty list of strings")
    _need(data["tokenizer"], _TOKENIZER, "tokenizer.")
    if data["tokenizer"]["max_length"] < 2:
        raise ValueError(f"tokenizer.max_length is {data['tokenizer']['max_length']}, must be >= 2")
    graphs = data["graphs"]
    for name, entry in graphs.items():
        if not isinstance(entry, dict):
            raise ValueError(f"graphs.{name} should be an object")
        _need(entry, _GRAPH, f"graphs.{name}.")
        if "data" in entry:
            if not isinstance(entry["data"], dict):
                raise ValueError(f"graphs.{name}.data should be an object")
            _need(entry["data"], _GRAPH, f"graphs.{name}.data.")
    if not data["variants"]:
        raise ValueError("variants is empty")
    for variant, sched in data["variants"].items():
        if not isinstance(sched, dict):
            raise ValueError(f"variants.{variant} should be an object")
        _need(sched, _SCHEDULE, f"variants.{variant}.")
        for part in ("layers", "ramps"):
            if len(sched[part]) != n:
                raise ValueError(f"variants.{variant}.{part} lists {len(sched[part])} graphs, num_layers is {n}")
        for ref in [sched["embeddings"], *sched["layers"], *sched["ramps"]]:
            if not isinstance(ref, str) or ref not in graphs:
                raise ValueError(f"variants.{variant} names graph {json.dumps(ref)}, which is not in graphs")
        if "segments" in sched:
            _check_segments(sched["segments"], graphs, n, f"variants.{variant}.segments")
    lookup = data.get("lookup")
    if lookup is not None and lookup not in graphs:
        raise ValueError(f"lookup names graph {json.dumps(lookup)}, which is not in graphs")


_SEGMENT: dict[str, type | tuple[type, ...]] = {"graph": str, "start": int, "end": int, "ramp": bool}


def _check_segments(segments: Any, graphs: dict[str, Any], n: int, where: str) -> None:
    """Segments cover layers 0..n in order, each at least one layer, the last one ending in its ramp."""
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"{where} should be a non-empty list")
    at = 0
    for k, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise ValueError(f"{where}[{k}] should be an object")
        _need(seg, _SEGMENT, f"{where}[{k}].")
        if seg["graph"] not in graphs:
            raise ValueError(f"{where}[{k}] names graph {json.dumps(seg['graph'])}, which is not in graphs")
        ramp_alone = k > 0 and seg["ramp"] and seg["start"] == seg["end"] == at  # a ramp after its layers
        if not ramp_alone and (seg["start"] != at or not at < seg["end"] <= n):
            raise ValueError(f"{where}[{k}] covers layers {seg['start']}..{seg['end']}; expected to start at {at}, "
                             f"end after it and by {n}")
        at = seg["end"]
    if at != n or not segments[-1]["ramp"]:
        raise ValueError(f"{where} must end at layer {n} with its ramp")


def validate(data: Any, path: Path) -> None:
    """Check the structure of a manifest (keys, types, every variant's graphs exist) so a hand-edited or
    damaged file fails here with one line naming the key, not later with a KeyError deep in a run."""
    try:
        if not isinstance(data, dict):
            raise ValueError("the top level should be a JSON object")
        _check(data)
    except ValueError as e:
        raise NanotrtError(f"{path} is not a valid nanotrt manifest: {e}; restore it or re-run `nanotrt export`"
                           ) from e


def new_manifest(root: Path, **fields: Any) -> Manifest:
    return Manifest(root, {"format": FORMAT, "format_version": FORMAT_VERSION, **fields,
                           "graphs": {}, "variants": {}})
