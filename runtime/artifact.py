"""The artifact directory and its ``manifest.json``: the only contract between export, build and run.

Layout::

    manifest.json
    tokenizer/tokenizer.json (+ the original tokenizer files)
    graphs/embeddings.onnx, graphs/layer_00.onnx, ..., graphs/ramp_00.onnx, ...
    <built engines, e.g. ort-int8.1a2b3c4d/layer_00.onnx, trt-fp16.5e6f7a8b/layer_00.plan>
    profile-<variant>.json (`nanotrt profile`)

``graphs`` maps a graph name to its entry (file, sha256, bytes, precision, I/O signature).
``variants`` maps a variant name ("fp32", "ort-int8", "trt-fp16", ...) to a full schedule:
which graph runs the embeddings, each layer, each ramp. ALBERT's schedule names one layer graph N times.
Nothing downstream guesses file names; it reads this file. No torch import here (device side).

Untrusted by default (README, "Security model"): every file the runtime reads is named here with its sha256
and size (graphs and their external data, the word table, the tokenizer, profiles), every such path must stay
inside the artifact (relative, no ``..``, no symlink out, a regular file), and the whole manifest is checked
against the graphs it names at load, from the I/O signatures it records (no ONNX parsing on the device).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from nanotrt.runtime import variants as registry
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import sha256_file, write_json

FORMAT = "nanotrt-artifact"
FORMAT_VERSION = 2  # 2: the tokenizer and profiles hashed, file paths confined, max_positions recorded
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is KBs; reading a bigger one is what an attacker would want


class ArtifactError(NanotrtError):
    """The artifact on disk is missing, damaged, or asks for something it may not (a path outside it)."""


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


def confined(root: Path, rel: Any, what: str) -> Path:
    """``root / rel`` when ``rel`` is a relative POSIX path that stays inside ``root`` after resolving
    symlinks; else one error naming the manifest field. Does not require the file to exist."""
    check_relative(rel, what)
    path = root / rel
    real, top = path.resolve(), root.resolve()
    if real != top and top not in real.parents:
        raise ArtifactError(f"{what} '{rel}' leads outside the artifact (a symlink to {real}): an artifact may "
                            "only name its own files; re-export it")
    return path


def check_relative(rel: Any, what: str) -> None:
    """The string form of ``confined``: relative, forward slashes, no ``..``, no NUL (checked at load)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise ArtifactError(f"{what} should be a relative path inside the artifact, not {json.dumps(rel)[:60]}")
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts or parts[:1] == ("~",):
        raise ArtifactError(f"{what} '{rel[:80]}' is not a relative path inside the artifact: an artifact may only "
                            "name its own files; re-export it")


class Manifest:
    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = Path(root)
        self.data = data
        self._verified: dict[str, tuple[int, int, int]] = {}  # path -> (size, mtime_ns, inode) when it matched
        self._holds: dict[str, int] = {}  # generation dir -> fd holding a shared flock (readers keep it alive)
        weakref.finalize(self, _close_fds, self._holds)

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise ArtifactError(f"artifact dir '{root}' does not exist: create it with `nanotrt export MODEL_DIR -o {root}`")
        if not path.is_file():
            raise ArtifactError(f"'{root}' has no {MANIFEST}: it is not a nanotrt artifact (run `nanotrt export`)")
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"{path} is {path.stat().st_size} bytes, more than a manifest can be: restore "
                                    "it or re-run `nanotrt export`")
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ArtifactError(f"{path} is not valid JSON ({str(e)[:120]}): re-run `nanotrt export`") from e
        except OSError as e:
            raise ArtifactError(f"cannot read {path} ({e.strerror}): check its permissions") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{path} is not a nanotrt manifest: re-run `nanotrt export`")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
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
        return confined(self.root, self.graphs[name]["file"], f"graphs.{name}.file")

    def verify(self, name: str) -> Path:
        """Check that the graph file (and its external-data file) exist inside the artifact and match their
        size and sha256 in the manifest; return the graph's path. Re-hashes only when a file changed. A graph
        of a built variant also holds that variant's folder for this reader (``hold``)."""
        entry = self.graphs[name]
        if entry.get("variant") in self.data["variants"]:
            self.hold(entry["variant"])
        p = self.verify_file(entry["file"], entry.get("file_bytes", entry["bytes"]), entry["sha256"], "graph file")
        if "data" in entry:
            self.verify_file(entry["data"]["file"], entry["data"]["bytes"], entry["data"]["sha256"], "graph data file")
        return p

    def verify_file(self, rel: str, size: int, sha: str, what: str = "file",
                    fix: str = "re-run `nanotrt export` / `nanotrt build`") -> Path:
        """``rel`` inside the artifact, a regular file of ``size`` bytes whose sha256 is ``sha``, else one
        error naming it. Cached per (size, mtime, inode): hashing 28 MB per swap would cost more than the load."""
        f = confined(self.root, rel, what)
        try:
            st = os.stat(f)  # follows a symlink that `confined` showed stays inside
        except OSError:  # missing, or deleted between the checks
            self._verified.pop(str(f), None)
            raise ArtifactError(f"{what} {f} listed in the manifest is missing or unreadable: {fix}") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO or /dev/zero would hang the hash
            raise ArtifactError(f"{what} {f} listed in the manifest is not a regular file: re-run `nanotrt export`")
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._verified.get(str(f)) == stamp:
            return f
        if st.st_size != size:
            self._verified.pop(str(f), None)
            raise ArtifactError(f"{what} {f} does not match its sha256 in the manifest (it is {st.st_size} bytes, "
                                f"not {size}: truncated or modified): {fix}")
        try:
            ok = sha256_file(f, limit=size) == sha
        except OSError as e:
            raise ArtifactError(f"{what} {f} listed in the manifest is unreadable ({e.strerror}): check its "
                                "permissions") from e
        if not ok:
            self._verified.pop(str(f), None)
            raise ArtifactError(f"{what} {f} does not match its sha256 in the manifest (corrupted or modified): {fix}")
        self._verified[str(f)] = stamp
        return f

    def tokenizer_file(self) -> Path:
        """The verified tokenizer.json."""
        t = self.data["tokenizer"]
        return self.verify_file(t["file"], t["bytes"], t["sha256"], "tokenizer file")

    def word_table(self) -> np.ndarray | None:
        """The memory-mapped word-embedding table (None without a lookup graph), verified against its hash
        and its recorded shape; never unpickled."""
        lookup = self.data.get("lookup")
        if lookup is None:
            return None
        path = self.verify(lookup)
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ArtifactError(f"word table {path} is not a .npy array ({str(e)[:100]}): re-run `nanotrt export`") from e
        want = tuple(self.graphs[lookup]["shape"])
        if table.shape != want or table.dtype != np.float32:
            raise ArtifactError(f"word table {path} is {table.dtype} {list(table.shape)}, the manifest says float32 "
                                f"{list(want)}: re-run `nanotrt export`")
        return table

    def profile_file(self, variant: str) -> Path | None:
        """The verified profile of ``variant`` (`nanotrt profile`), None when the manifest lists none."""
        entry = self.data.get("profiles", {}).get(variant)
        if entry is None:
            return None
        return self.verify_file(entry["file"], entry["bytes"], entry["sha256"], "profile", "re-run `nanotrt profile`")

    # --- generations: a rebuilt variant's old folder stays while a reader holds it -------------
    def hold(self, variant: str) -> None:
        """Hold ``variant``'s folder (a shared flock on it) so that a rebuild in another process leaves the files
        this reader uses in place until it is released or the process ends (`nanotrt build` removes a replaced
        folder only when it can take the lock exclusively, else the next build sweeps it)."""
        folder = self.data["variants"].get(variant, {}).get("dir")
        if not folder or folder in self._holds:
            return
        path = confined(self.root, folder, f"variants.{variant}.dir")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            raise ArtifactError(f"the folder {path} of variant {variant} is missing: it was rebuilt or removed "
                                "while this run started; run again (or re-run `nanotrt build`)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ArtifactError(f"the folder {path} of variant {variant} is being removed by `nanotrt build`: "
                                "run again") from None
        self._holds[folder] = fd

    def release(self) -> None:
        """Let go of every held folder (also done when the manifest is garbage-collected)."""
        _close_fds(self._holds)

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

    def file_entry(self, file: Path) -> dict[str, Any]:
        """{file, sha256, bytes} of a file inside the artifact (tokenizer, profiles)."""
        return {"file": file.relative_to(self.root).as_posix(), "sha256": sha256_file(file),
                "bytes": file.stat().st_size}

    def set_variant(self, variant: str, schedule: Schedule, **info: Any) -> None:
        self.data["variants"][variant] = {**schedule.to_json(), **info}

    def save(self, root: Path | None = None) -> None:
        write_json(Path(root or self.root) / MANIFEST, self.data)


def _close_fds(holds: dict[str, int]) -> None:
    for fd in holds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    holds.clear()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: Python's json accepts them, JSON does not


# --- validation of a loaded (possibly hand-edited, possibly hostile) manifest -----------------
_TOP: dict[str, type | tuple[type, ...]] = {
    "family": str, "num_layers": int, "hidden_size": int, "labels": list, "task_type": str, "tokenizer": dict,
    "graphs": dict, "variants": dict,
}
_TOKENIZER: dict[str, type | tuple[type, ...]] = {"file": str, "sha256": str, "bytes": int, "max_length": int,
                                                  "pad_id": int, "pad_token": str}
_FILE: dict[str, type | tuple[type, ...]] = {"file": str, "sha256": str, "bytes": int}
_SCHEDULE: dict[str, type | tuple[type, ...]] = {"embeddings": str, "layers": list, "ramps": list}
TASK_TYPES = ("classification", "regression")
MAX_LENGTH_LIMIT = 1 << 16  # tokens; no encoder here has a position table near it
_SHA = re.compile(r"[0-9a-f]{64}")
# What the runner feeds each position (engines/onnxruntime.py passes exactly a graph's own input names)
_FEEDS = {"embeddings": {"inputs_embeds", "input_ids", "token_type_ids"},
          "layer": {"hidden_states", "attention_mask"}, "ramp": {"hidden_states", "attention_mask"}}
_NEEDS = {"embeddings": "hidden_states", "layer": "hidden_states_out", "ramp": "logits"}
_NOT_AT = {"embeddings": {"layer", "ramp", "layer+ramp", "lookup", "whole"},  # roles that cannot sit here
           "layer": {"embeddings", "ramp", "lookup", "whole"}, "ramp": {"embeddings", "layer", "lookup", "whole"}}


def _need(obj: dict[str, Any], keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    for key, typ in keys.items():
        if key not in obj:
            raise ValueError(f"{where}{key} is missing")
        value = obj[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise ValueError(f"{where}{key} should be {names}, not {type(value).__name__} {json.dumps(value)[:40]}")


def _file(entry: Any, where: str) -> None:
    """A {file, sha256, bytes} entry: confined path, a real sha256, a size that cannot switch a budget off."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} should be an object")
    _need(entry, _FILE, f"{where}.")
    try:
        check_relative(entry["file"], f"{where}.file")
    except ArtifactError as e:
        raise ValueError(str(e).split(": an artifact")[0]) from e
    if not _SHA.fullmatch(entry["sha256"]):
        raise ValueError(f"{where}.sha256 is not a sha256 (64 lowercase hex digits)")
    for key in ("bytes", "file_bytes"):
        if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 0):
            raise ValueError(f"{where}.{key} is {json.dumps(entry[key])[:40]}, must be a whole number >= 0")


def _sizes(obj: dict[str, Any], where: str) -> None:
    """Every other ``*_bytes`` field (TensorRT scratch and I/O buffers count against the budget)."""
    for k, v in obj.items():
        if k.endswith("_bytes") and k != "file_bytes":
            vals = v.values() if isinstance(v, dict) else [v]
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in vals):
                raise ValueError(f"{where}.{k} should be a whole number of bytes >= 0")


def _check_top(data: dict[str, Any]) -> None:
    _need(data, _TOP, "")
    n, h = data["num_layers"], data["hidden_size"]
    if n < 1:
        raise ValueError(f"num_layers is {n}, must be >= 1")
    if h < 1:
        raise ValueError(f"hidden_size is {h}, must be >= 1")
    if data["task_type"] not in TASK_TYPES:
        raise ValueError(f"task_type '{data['task_type']}' is not one of {', '.join(TASK_TYPES)}")
    labels = data["labels"]
    if not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError("labels should be a non-empty list of strings")
    if data["task_type"] == "regression" and len(labels) != 1:
        raise ValueError(f"task_type is regression but there are {len(labels)} labels (a regression model has one)")
    if data["task_type"] == "classification" and len(labels) < 2:
        raise ValueError("task_type is classification but there is one label (a classifier needs two or more)")
    if "default_exit" in data and not isinstance(data["default_exit"], str):
        raise ValueError(f"default_exit should be a string like 'patience=3', not {json.dumps(data['default_exit'])[:40]}")
    if "config" in data and not isinstance(data["config"], dict):
        raise ValueError("config should be an object")


def _check_tokenizer(data: dict[str, Any]) -> None:
    tok = data["tokenizer"]
    _need(tok, _TOKENIZER, "tokenizer.")
    _file(tok, "tokenizer")
    ml = tok["max_length"]
    if not 2 <= ml <= MAX_LENGTH_LIMIT:
        raise ValueError(f"tokenizer.max_length is {ml}, must be 2..{MAX_LENGTH_LIMIT}")
    positions = tok.get("max_positions", data.get("config", {}).get("max_position_embeddings"))
    if isinstance(positions, int) and not isinstance(positions, bool) and ml > positions:
        raise ValueError(f"tokenizer.max_length is {ml} but the model has {positions} positions: inputs that long "
                         "would index past the position table")


def _check_graphs(data: dict[str, Any]) -> None:
    for name, entry in data["graphs"].items():
        _file(entry, f"graphs.{name}")
        _sizes(entry, f"graphs.{name}")
        if "data" in entry:
            _file(entry["data"], f"graphs.{name}.data")
            if entry.get("file_bytes", -1) + entry["data"]["bytes"] != entry["bytes"]:
                raise ValueError(f"graphs.{name}.bytes is not file_bytes + data.bytes")
        for side in ("inputs", "outputs"):
            if side in entry and not (isinstance(entry[side], list)
                                      and all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in entry[side])):
                raise ValueError(f"graphs.{name}.{side} should be a list of {{name, dtype, shape}}")
    lookup = data.get("lookup")
    if lookup is not None:
        if lookup not in data["graphs"]:
            raise ValueError(f"lookup names graph {json.dumps(lookup)}, which is not in graphs")
        shape = data["graphs"][lookup].get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) and x > 0 for x in shape)):
            raise ValueError(f"graphs.{lookup}.shape should be [rows, hidden_size]")
        payload = 4 * shape[0] * shape[1]  # float32; the .npy header is at most a few KB
        if not payload < data["graphs"][lookup]["bytes"] <= payload + 65536:
            raise ValueError(f"graphs.{lookup}.bytes does not fit a float32 table of shape {shape}")


def _dims(graph: dict[str, Any], side: str, name: str) -> list[Any] | None:
    io = next((x for x in graph.get(side, []) if x["name"] == name), None)
    return None if io is None else list(io.get("shape") or [])


def _check_position(data: dict[str, Any], where: str, gname: str, pos: str, index: int | None) -> None:
    """The graph at one position of a schedule is the right kind, takes what the runner feeds and gives what
    it reads, in the model's width (from the recorded I/O signature)."""
    g = data["graphs"][gname]
    role = g.get("role")
    if role in _NOT_AT[pos]:
        raise ValueError(f"{where} puts graph {gname} (a {role} graph) where a {pos} graph runs: graphs swapped")
    if "outputs" not in g:
        return
    fed = _FEEDS[pos] if data.get("lookup") is not None or pos != "embeddings" else _FEEDS[pos] - {"inputs_embeds"}
    extra = [i["name"] for i in g.get("inputs", []) if i["name"] not in fed]
    if extra:
        raise ValueError(f"graph {gname} at {where} takes inputs {extra} the runtime does not feed there")
    outs = {o["name"] for o in g["outputs"]}
    if _NEEDS[pos] not in outs:
        raise ValueError(f"graph {gname} at {where} has no '{_NEEDS[pos]}' output (it has {sorted(outs)})")
    h = data["hidden_size"]
    for side, io in (("inputs", "hidden_states"), ("outputs", "hidden_states"), ("outputs", "hidden_states_out")):
        d = _dims(g, side, io)
        if d and isinstance(d[-1], int) and d[-1] != h:
            raise ValueError(f"graph {gname} at {where}: {io} is {d[-1]} wide, hidden_size is {h}")
    d = _dims(g, "inputs", "inputs_embeds")
    if d and isinstance(d[-1], int) and data.get("lookup") is not None:
        rows, width = data["graphs"][data["lookup"]]["shape"]
        if d[-1] != width:
            raise ValueError(f"graph {gname} at {where} takes {d[-1]}-wide embeddings but the word table is "
                             f"{rows} x {width}")
    if pos == "ramp":
        d = _dims(g, "outputs", "logits")
        width = len(data["labels"])
        if d and isinstance(d[-1], int) and d[-1] != width:
            raise ValueError(f"graph {gname} at {where} gives {d[-1]} logits but the manifest has {width} label(s)")
    if index is not None and isinstance(g.get("index"), int) and role in ("ramp", "layer+ramp") and g["index"] != index:
        raise ValueError(f"{where} runs {gname} (ramp {g['index']}) as ramp {index}: graphs swapped")


def _check_variants(data: dict[str, Any]) -> None:
    graphs, n = data["graphs"], data["num_layers"]
    if not data["variants"]:
        raise ValueError("variants is empty")
    for variant, sched in data["variants"].items():
        if not isinstance(sched, dict):
            raise ValueError(f"variants.{variant} should be an object")
        _need(sched, _SCHEDULE, f"variants.{variant}.")
        _sizes(sched, f"variants.{variant}")
        if "dir" in sched and (not isinstance(sched["dir"], str) or "/" in sched["dir"] or sched["dir"] in ("", ".", "..")):
            raise ValueError(f"variants.{variant}.dir should be the name of a folder in the artifact")
        for part in ("layers", "ramps"):
            if len(sched[part]) != n:
                raise ValueError(f"variants.{variant}.{part} lists {len(sched[part])} graphs, num_layers is {n}")
        for ref in [sched["embeddings"], *sched["layers"], *sched["ramps"]]:
            if not isinstance(ref, str) or ref not in graphs:
                raise ValueError(f"variants.{variant} names graph {json.dumps(ref)}, which is not in graphs")
        if "segments" in sched:  # a plan: segments of layers, checked by _check_segments
            _check_segments(sched["segments"], graphs, n, f"variants.{variant}.segments")
            continue
        where = f"variants.{variant}"
        _check_position(data, f"{where}.embeddings", sched["embeddings"], "embeddings", None)
        layer_index = [graphs[g].get("index") for g in sched["layers"] if graphs[g].get("role") == "layer"]
        if all(isinstance(i, int) for i in layer_index) and layer_index != sorted(layer_index):
            raise ValueError(f"{where}.layers runs layer graphs in the order {layer_index}: graphs swapped")
        for i, (lay, ramp) in enumerate(zip(sched["layers"], sched["ramps"], strict=True)):
            _check_position(data, f"{where}.layers[{i}]", lay, "layer", None)
            _check_position(data, f"{where}.ramps[{i}]", ramp, "ramp", i)


def _check_files(data: dict[str, Any]) -> None:
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ValueError("profiles should be an object")
    for variant, entry in profiles.items():
        _file(entry, f"profiles.{variant}")
    if "checkpoint" in data:
        try:
            check_relative(data["checkpoint"], "checkpoint")
        except ArtifactError as e:
            raise ValueError(str(e).split(": an artifact")[0]) from e


def _check(data: dict[str, Any]) -> None:
    _check_top(data)
    _check_tokenizer(data)
    _check_graphs(data)
    _check_variants(data)
    _check_files(data)


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
    """Check a manifest (keys, types, sizes, confined paths, every variant's graphs exist and fit their
    positions) so a hand-edited, damaged or hostile file fails here with one line naming the key, not later
    with a KeyError deep in a run or a wrong answer."""
    try:
        if not isinstance(data, dict):
            raise ValueError("the top level should be a JSON object")
        _check(data)
    except ValueError as e:
        raise ArtifactError(f"{path} is not a valid nanotrt manifest: {e}; restore it or re-run `nanotrt export`"
                            ) from e


def new_manifest(root: Path, **fields: Any) -> Manifest:
    return Manifest(root, {"format": FORMAT, "format_version": FORMAT_VERSION, **fields,
                           "graphs": {}, "variants": {}})
