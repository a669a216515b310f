"""`nanotrt profile`: measure this device's latency per graph over a batch x sequence grid.

The profile lives next to the manifest (``profile-<variant>.json``) with the machine it was measured on;
the deadline exit rule reads it to predict when the next layer would finish. Each graph is loaded once,
run on synthetic inputs of every grid shape (warm-up, then ``repeats`` timed runs; median and p90 kept),
and its load time recorded: under a memory budget smaller than the model, a step costs load + run.
Device-side: numpy and the backend only.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest, Schedule
from nanotrt.runtime.backend import Backend
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import write_json, writer_lock

FORMAT = "nanotrt-profile"
FORMAT_VERSION = 1
BATCHES = (1, 4, 16)
SEQS = (16, 32, 64, 128)
WARMUP = 2


def profile_path(root: str | Path, variant: str) -> Path:
    return Path(root) / f"profile-{variant}.json"


def proc_status_bytes(field: str = "VmRSS") -> int:
    """A byte count from /proc/self/status (VmRSS, VmHWM = this address space's peak RSS, RssAnon, ...);
    0 where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "tokenizers", "torch", "transformers")


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU model and count, OS, Python, the installed libraries that run or
    feed the models. The one description of a machine: profiles and every benchmark report record it."""
    import importlib.metadata as md

    cpu = cpu_name()
    libs = {}
    for lib in LIBRARIES:
        try:
            libs[lib] = md.version(lib)
        except md.PackageNotFoundError:
            continue
    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "libraries": libs}


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear in ``xs``, extended linearly beyond both ends (never below zero)."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return max(0.0, ys[i] + t * (ys[i + 1] - ys[i]))


@dataclass
class DeviceProfile:
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> DeviceProfile:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise NanotrtError(f"cannot read the device profile {path} ({e}): re-run `nanotrt profile`") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise NanotrtError(f"{path} is not a nanotrt device profile of version {FORMAT_VERSION}: "
                               "re-run `nanotrt profile`")
        return cls(data)

    def graph_seconds(self, name: str, batch: int, seq: int, stat: str = "p90_ms") -> float:
        """Run time of one graph at (batch, seq), bilinear over the measured grid; plus its load time when
        the profile was made under a budget that swaps engines."""
        g = self.data["graphs"][name]
        bs, ss = self.data["grid"]["batch"], self.data["grid"]["seq"]
        per_batch = [_interp(seq, ss, [g["runs"][f"{b}x{s}"][stat] for s in ss]) for b in bs]
        ms = _interp(batch, bs, per_batch)
        if self.data.get("swapping"):
            ms += g["load_ms"]
        return ms / 1000.0

    def groups(self) -> list[dict[str, Any]]:
        """The walk's steps between exit points: {graphs, start, end}."""
        s = self.data["schedule"]
        if "groups" in s:
            return list(s["groups"])
        return [{"graphs": [lay, ramp], "start": i, "end": i + 1}  # profiles before plans: layer i + ramp i
                for i, (lay, ramp) in enumerate(zip(s["layers"], s["ramps"], strict=True))]

    def step_seconds(self, layer: int, batch: int, seq: int, stat: str = "p90_ms") -> float:
        """Predicted seconds of the walk from one exit point to the next, for the step holding layer ``layer``
        (0-based): layer + ramp per layer, or a plan's segment. The deadline rule's next step."""
        group = next(g for g in self.groups() if g["start"] <= layer < g["end"])
        return sum(self.graph_seconds(name, batch, seq, stat) for name in dict.fromkeys(group["graphs"]))

    def embeddings_seconds(self, batch: int, seq: int) -> float:
        """The embeddings when they run alone (0 when a plan's first segment holds them)."""
        emb = self.data["schedule"].get("embeddings_step", self.data["schedule"]["embeddings"])
        return self.graph_seconds(emb, batch, seq) if emb else 0.0


def exit_groups(sched: Schedule) -> tuple[str | None, list[dict[str, Any]]]:
    """The walk cut at its exit points: (the embeddings graph when it runs alone, [{graphs, start, end}])."""
    steps = sched.steps()
    emb = steps[0].graph if steps[0].end == 0 else None
    groups: list[dict[str, Any]] = []
    graphs: list[str] = []
    for st in steps[1 if emb else 0:]:
        if not graphs:
            groups.append({"graphs": graphs, "start": st.start, "end": st.end})
        graphs.append(st.graph)
        groups[-1]["end"] = st.end
        if st.ramp:
            graphs = []
    return emb, groups


def load_profile(artifact: Manifest | str | Path, variant: str, backend: str) -> DeviceProfile | None:
    """The artifact's profile for ``variant`` on ``backend`` if one was made on this machine, else None
    (a warning says why a profile was not used; the deadline rule then measures online). Only a profile the
    manifest lists, checked against its sha256, is read."""
    manifest = artifact if isinstance(artifact, Manifest) else Manifest.load(artifact)
    path = manifest.profile_file(variant)
    if path is None:
        if profile_path(manifest.root, variant).is_file():
            warnings.warn(f"{profile_path(manifest.root, variant)} is not listed in the manifest (made by an older "
                          "nanotrt, or copied in): not used; re-run `nanotrt profile`", stacklevel=2)
        return None
    prof = DeviceProfile.read(path)
    made, here = prof.data.get("machine", {}), machine()
    if prof.data.get("backend") != backend or (made.get("cpu"), made.get("cores")) != (here["cpu"], here["cores"]):
        warnings.warn(f"{path} was measured on another machine or backend ({made.get('cpu')}, "
                      f"{prof.data.get('backend')}); the deadline rule measures online instead: re-run "
                      "`nanotrt profile` here", stacklevel=2)
        return None
    return prof


def _feeds(manifest: Manifest, name: str, batch: int, seq: int, rng: np.random.Generator,
           table: np.ndarray | None) -> dict[str, np.ndarray]:
    hidden = int(manifest.data["hidden_size"])
    feeds: dict[str, np.ndarray] = {}
    for inp in manifest.graphs[name].get("inputs", []):
        n = inp["name"]
        if n == "inputs_embeds":
            width = table.shape[1] if table is not None else int(inp["shape"][-1])
            feeds[n] = rng.standard_normal((batch, seq, width)).astype(np.float32) * 0.05
        elif n in ("input_ids", "token_type_ids"):
            feeds[n] = np.full((batch, seq), 5 if n == "input_ids" else 0, dtype=np.int64)
        elif n == "attention_mask":
            feeds[n] = np.ones((batch, seq), dtype=np.int64)
        else:  # hidden_states
            feeds[n] = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
    return feeds


def measure(manifest: Manifest, backend: Backend, variant: str, swapping: bool, budget: str,
            batches: tuple[int, ...] = BATCHES, seqs: tuple[int, ...] = SEQS, repeats: int = 10,
            tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every graph of ``variant``'s schedule over the grid; returns the profile document."""
    sched = manifest.schedule(variant)
    emb, groups = exit_groups(sched)
    table = manifest.word_table()
    rng = np.random.default_rng(0)
    backend.configure(swapping=swapping)
    graphs: dict[str, Any] = {}
    for name in sched.names():
        t = time.perf_counter()
        engine = backend.load(manifest, name)
        load_ms = (time.perf_counter() - t) * 1000
        runs = {}
        try:
            for b in batches:
                for s in seqs:
                    feeds = _feeds(manifest, name, b, s, rng, table)
                    for _ in range(WARMUP):
                        backend.run(engine, feeds)
                    ts = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        backend.run(engine, feeds)
                        ts.append((time.perf_counter() - t) * 1000)
                    runs[f"{b}x{s}"] = {"p50_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90))}
        finally:
            backend.release(engine)
        graphs[name] = {"load_ms": load_ms, "runs": runs}
        if tick:
            tick(name)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant, "backend": backend.name,
            "memory_budget": budget, "swapping": swapping, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "grid": {"batch": list(batches), "seq": list(seqs)},
            "repeats": repeats, "schedule": {"embeddings": sched.embeddings, "layers": sched.layers,
                                             "ramps": sched.ramps, "embeddings_step": emb, "groups": groups},
            "graphs": graphs}


def write_profile(manifest: Manifest, doc: dict[str, Any]) -> Path:
    """Write the profile and list it (sha256, bytes) in the manifest, under the artifact's writer lock."""
    with writer_lock(manifest.root):
        path = profile_path(manifest.root, doc["variant"])
        write_json(path, doc)  # temp file + rename
        fresh = Manifest.load(manifest.root)  # another writer may have changed it since this run began
        fresh.data.setdefault("profiles", {})[doc["variant"]] = fresh.file_entry(path)
        fresh.save()
    return path


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        vals = ()
    if not vals or vals[0] < 1:
        raise NanotrtError(f"cannot read {what} '{text}': use positive integers separated by commas, e.g. 1,4,16")
    return vals


def run_profile(artifact: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                variant: str | None = None, memory_budget: str = "all", batches: str = "1,4,16",
                seqs: str = "16,32,64,128", repeats: int = 10, threads: int | None = None,
                tick: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Measure and write the device profile of ``artifact``; returns (path, document)."""
    from nanotrt.runtime.backend import get_backend
    from nanotrt.runtime.runner import engines_swapped, resolve_budget, runner_variant

    if repeats < 1:
        raise NanotrtError("--repeats must be >= 1")
    m = Manifest.load(artifact)
    options: dict[str, Any] = {"threads": threads} if threads is not None and backend == "onnxruntime" else {}
    be = get_backend(backend, **options)
    try:
        v = runner_variant(m, variant, precision, be.name, memory_budget)  # the runner's rule
        reserved = be.reserve(m, m.schedule(v).names())  # as the runner does: part of the budget
        budget = resolve_budget(memory_budget, m, v, reserved)
        doc = measure(m, be, v, engines_swapped(m, v, budget, reserved), memory_budget,
                      _ints(batches, "batch sizes"), _ints(seqs, "sequence lengths"), repeats, tick)
    finally:
        be.close()
    return write_profile(m, doc), doc
