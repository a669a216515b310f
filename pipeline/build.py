"""`nanotrt build`: per-graph engines in FP32 (optimized) / FP16 / INT8 added to an artifact.

Each variant is written into a fresh folder (a generation) inside the artifact, then the manifest is replaced in
one rename (``runtime/fsutil.py``: ``generation``), then the previous folder of that variant is removed unless a
running reader still holds it: an interrupted build leaves the previous artifact intact, a streaming `predict`
keeps its files, and re-running with the same options is a no-op. One build per artifact at a time (a lock
file); the next build sweeps what an interrupted one left inside the artifact.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest, Schedule
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import generation, sweep_generations, writer_lock
from nanotrt.runtime.progress import console, progress

# Max relative L2 error of a graph's output (on its FP32 calibration inputs) before it is kept in FP32.
# The per-graph errors of a build are recorded in its manifest (variants.ort-int8.rel_error); for the
# committed MiniLM-L6 builds the maximum is 0.08-0.12 (benchmarks/results/int8_layers.md).
INT8_TOLERANCE = 0.10
BUILDER_VERSION = 6  # part of each variant's options: a newer builder rebuilds instead of "up to date"


def _up_to_date(m: Manifest, variant: str, options: dict[str, Any]) -> bool:
    info = m.data["variants"].get(variant)
    if not info or info.get("options") != options:
        return False
    try:
        for n in m.schedule(variant).names():
            m.verify(n)
    except NanotrtError:
        return False
    return True


def _graph_units(m: Manifest) -> list[str]:
    """Unique graphs of the FP32 schedule (ALBERT's shared layer once)."""
    return m.schedule("fp32").names()


def _optimize_ort(src: Path, dst: Path, m: Manifest, fp16: bool) -> None:
    import onnx
    from nanotrt.engines.onnxruntime import library_sessions
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = m.data["config"]
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_heads") or 0)
    with library_sessions():  # its ORT pass builds a session of its own
        opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=int(m.data["hidden_size"]),
                             opt_level=1, only_onnxruntime=False)
    model = opt.model
    if fp16:
        # keep_io_types: the runner feeds and reads fp32; casts sit at the graph boundary.
        model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(dst))


def _ort_offline_optimize(path: Path) -> None:
    """Run ORT's session-level graph optimizations (incl. QDQ fusions) once at build time and save the
    result with its weights as external data (``<graph>.onnx.data``), so the runtime loads with
    optimizations disabled and without parsing weights out of a protobuf: a BERT-base layer then loads
    in half the time (benchmarks/results/ort_load_options.md: 37.7 -> 19.6 ms), which matters when
    layers are swapped.
    CPU-EP specific, like the variant."""
    import onnx
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    so = session_options(ort)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    tmp = path.with_suffix(".opt.onnx")
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)


def build(artifact: str | Path, backend: str = "onnxruntime", fp16: bool = False, int8: bool = False,
          calib_task: str | None = None, calib_size: int = 512, calib_method: str = "minmax",
          data_dir: str | Path | None = None, int8_tolerance: float = INT8_TOLERANCE, dynamic: bool = False,
          trt_options: dict[str, Any] | None = None, fused: bool = False, swap: bool = False) -> list[str]:
    """Build the requested variants into ``artifact``; returns the variant names now present. One build per
    artifact at a time (a second one waits for the first, then finds its variants up to date)."""
    Manifest.load(artifact)  # a missing or broken artifact fails before the lock file is made
    with writer_lock(Path(artifact)):
        _sweep(Manifest.load(artifact))
        return _build_locked(artifact, backend, fp16, int8, calib_task, calib_size, calib_method, data_dir,
                             int8_tolerance, dynamic, trt_options, fused, swap)


def _sweep(m: Manifest) -> None:
    """What interrupted builds left inside the artifact (staging folders, generations the manifest no longer
    names, manifest temp files); a generation a reader still holds stays for a later build."""
    names = [s.name for s in registry.all_specs()] + [WHOLE_INT8]
    named = {info.get("dir") for info in m.data["variants"].values()}
    named |= {e["file"].split("/")[0] for e in m.graphs.values()}
    removed = sweep_generations(m.root, names, {n for n in named if n})
    if removed:
        console.print(f"removed {len(removed)} leftover(s) of interrupted builds: {', '.join(sorted(removed))}")


def _build_locked(artifact: str | Path, backend: str, fp16: bool, int8: bool, calib_task: str | None,
                  calib_size: int, calib_method: str, data_dir: str | Path | None, int8_tolerance: float,
                  dynamic: bool, trt_options: dict[str, Any] | None, fused: bool, swap: bool) -> list[str]:
    m = Manifest.load(artifact)
    registry.build_targets(backend, False, False, False, False)  # an unknown backend fails before any work
    if int8 and not calib_task:
        calib_task = m.task
        if not calib_task:
            raise NanotrtError("--int8 needs calibration data: pass --calib-task TASK (its train split is used)")
    if int8:  # fail before building anything when the calibration data is missing
        from nanotrt.pipeline.glue import get_task, task_file

        task_file(get_task(calib_task or ""), "train", data_dir)
    trt_mod: Any = None
    if backend == "tensorrt":
        from nanotrt.pipeline import trt_build as trt_mod  # the TensorRT build side (pipeline/trt_build.py)

        trt_options = trt_mod.setup(m, trt_options)
    targets = registry.build_targets(backend, fp16, int8, dynamic, fused, swap)
    calib = None
    built: list[str] = []
    for spec in targets:
        variant = spec.name
        options: dict[str, Any] = {"builder": BUILDER_VERSION, **(trt_options or {})}
        if spec.precision == "int8" and spec.kind == "built":
            options.update(calib_task=calib_task, calib_size=calib_size, calib_method=calib_method,
                           int8_tolerance=int8_tolerance)
        if spec.source:  # rebuilt whenever the variant it is made from was
            options = {"builder": BUILDER_VERSION, "from": m.data["variants"][spec.source].get("dir")}
            if spec.kind == "swap":  # the swap format has its own version (pipeline/swap_build.py)
                from nanotrt.pipeline.swap_build import SWAP_VERSION

                options["swap"] = SWAP_VERSION
        if _up_to_date(m, variant, options):
            console.print(f"{variant}: up to date")
            built.append(variant)
            continue
        # Dynamic INT8 too when there is a task: its per-graph error is measured on it (without one, as in
        # `nanotrt build --dynamic` alone, it needs no data).
        if spec.kind == "built" and calib is None and (spec.needs_calibration or (spec.precision == "int8" and calib_task)):
            from nanotrt.calibration.readers import collect
            from nanotrt.pipeline.glue import read_split

            calib = collect(m, read_split(calib_task or "", "train", data_dir, limit=calib_size), calib_task or "")
        make = functools.partial(_build_variant, m, spec, calib=calib, calib_method=calib_method,
                                 tolerance=int8_tolerance, trt_mod=trt_mod, trt_options=trt_options or {})
        m, info = install_variant(m, variant, options, make)
        built.append(variant)
        console.print(f"{variant}: built ({info.get('summary', '')})")
    if int8 and backend == "onnxruntime" and "whole" in m.graphs:
        _build_whole_int8(m, calib_task or "", data_dir)
    return built


Made = tuple[dict[str, tuple[str, dict[str, Any]]], Schedule, dict[str, Any]]  # graphs, schedule, variant info


def install_variant(m: Manifest, variant: str, options: dict[str, Any], make: Callable[[Path], Made]
                    ) -> tuple[Manifest, dict[str, Any]]:
    """Build ``variant`` into a staging folder inside the artifact (``make(folder)`` returns its graphs, given
    as (file in the folder, manifest fields), its schedule and info), then switch (``fsutil.generation``): the
    folder renamed into place, one manifest rename, the previous folder retired (removed unless a running reader
    holds it). Under the artifact's writer lock. Returns the new manifest and the info."""
    now: list[Manifest] = []
    with writer_lock(m.root), generation(m.root, variant) as gen:
        graphs, sched, info = make(gen.staging)

        def switch(final_dir: Path) -> str | None:
            fresh = Manifest.load(m.root)
            old = fresh.data["variants"].get(variant, {}).get("dir")
            for name in fresh.variant_graphs(variant):
                del fresh.graphs[name]
            for name, (path, fields) in graphs.items():
                fresh.add_graph(name, final_dir / path, variant=variant, **fields)
            fresh.set_variant(variant, sched, dir=final_dir.name, options=options, **info)
            fresh.save()
            m.release()  # this process's own reads of the old folder must not keep it
            now.append(fresh)
            return old

        gen.commit(switch)
    return now[0], info


WHOLE_INT8 = "whole-int8-dynamic"  # graph name of the bench's INT8 one-graph baseline


def _build_whole_int8(m: Manifest, calib_task: str, data_dir: str | Path | None) -> None:
    """The INT8 baseline nanotrt's INT8 rows are held to: the whole one-graph model through ORT's
    ``quantize_dynamic`` with per-channel INT8 weights, what a user gets from two lines of ORT. Not part
    of any schedule; same atomic switch as a variant; its error against the FP32 whole graph on task
    train sentences is recorded (no tolerance: a baseline is what it is)."""
    from nanotrt.calibration.quantize import quantize_dynamic_int8, relative_error
    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.tokenize import Tokenizer

    src = m.graphs["whole"]
    options = {"builder": BUILDER_VERSION, "quantize": "dynamic", "per_channel": True, "source": src["sha256"]}
    entry = m.graphs.get(WHOLE_INT8)
    if entry and entry.get("options") == options:
        try:
            m.verify(WHOLE_INT8)
            console.print(f"{WHOLE_INT8}: up to date")
            return
        except NanotrtError:
            pass
    split = read_split(calib_task, "train", data_dir, limit=64)
    tok = Tokenizer.from_manifest(m)
    feeds = [tok(split.texts[i:i + 16], split.pairs[i:i + 16] if split.pairs else None) for i in range(0, len(split), 16)]
    with generation(m.root, WHOLE_INT8) as gen:
        out = gen.staging / "whole.onnx"
        quantize_dynamic_int8(m.verify("whole"), out)
        err = relative_error(m.verify("whole"), out, feeds)

        def switch(final_dir: Path) -> str | None:
            fresh = Manifest.load(m.root)
            old = fresh.graphs.get(WHOLE_INT8, {}).get("file", "").split("/")[0]
            fresh.add_graph(WHOLE_INT8, final_dir / "whole.onnx", role="whole", index=None, precision="int8",
                            format="onnx", inputs=src["inputs"], outputs=src["outputs"], options=options,
                            rel_error=err)
            fresh.save()
            return old or None

        gen.commit(switch)
    console.print(f"{WHOLE_INT8}: built (ORT quantize_dynamic, per-channel; rel. error vs FP32 {err:.3f})")


# --- ONNX Runtime variants: one small builder per variant, each turning one exported graph into its
# built form and returning the precision it ended in (None: the variant's own) ------------------------

@dataclass
class _UnitJob:
    m: Manifest
    unit: str  # graph name in the exported fp32 schedule
    src: Path
    dst: Path
    calib: Any  # CalibrationSet or None
    calib_method: str
    tolerance: float
    errors: dict[str, float]  # per-graph relative error, filled by the INT8 builders
    kept_fp32: list[str]


def _unit_fp32(job: _UnitJob) -> str | None:
    _optimize_ort(job.src, job.dst, job.m, fp16=False)
    return None


def _unit_fp16(job: _UnitJob) -> str | None:
    _optimize_ort(job.src, job.dst, job.m, fp16=True)
    return None


def _unit_int8_dynamic(job: _UnitJob) -> str | None:
    from nanotrt.calibration.quantize import quantize_dynamic_int8, relative_error

    precision = None if quantize_dynamic_int8(job.src, job.dst) else "fp32"
    if job.calib:  # built alongside the static variant: measure it on the same calibration feeds
        job.errors[job.unit] = relative_error(job.src, job.dst, job.calib.batches(job.unit))
    return precision


def _unit_int8_static(job: _UnitJob) -> str | None:
    from nanotrt.calibration.quantize import quantize_static_qdq, relative_error

    names = [i["name"] for i in job.m.graphs[job.unit]["inputs"]]
    batches = job.calib.batches(job.unit)
    precision = None if quantize_static_qdq(job.src, job.dst, batches, names, job.calib_method) else "fp32"
    job.errors[job.unit] = relative_error(job.src, job.dst, batches)
    if job.errors[job.unit] > job.tolerance:  # sensitive graph: keep it in FP32 (mixed precision)
        shutil.copy2(job.src, job.dst)
        job.kept_fp32.append(job.unit)
        return "fp32"
    return precision


# One builder per built ONNX Runtime variant of the registry (runtime/variants.py); a test checks that every
# registered one has its builder.
ORT_UNIT_BUILDERS: dict[str, Callable[[_UnitJob], str | None]] = {
    "ort-fp32": _unit_fp32, "ort-fp16": _unit_fp16, "ort-int8-dynamic": _unit_int8_dynamic,
    "ort-int8": _unit_int8_static,
}


def _build_variant(m: Manifest, spec: registry.VariantSpec, out: Path, calib: Any, calib_method: str,
                   tolerance: float, trt_mod: Any, trt_options: dict[str, Any]
                   ) -> tuple[dict[str, tuple[str, dict[str, Any]]], Schedule, dict[str, Any]]:
    if spec.kind == "fused":
        return _build_fused(m, spec, out)
    if spec.kind == "swap":
        from nanotrt.pipeline.swap_build import build_swap

        return build_swap(m, spec, out)
    variant, tensorrt = spec.name, spec.backend == "tensorrt"
    base = m.schedule("fp32")
    units = _graph_units(m)
    graphs: dict[str, tuple[str, dict[str, Any]]] = {}
    rename: dict[str, str] = {}
    errors: dict[str, float] = {}
    kept_fp32: list[str] = []
    with progress() as bar:
        task = bar.add_task(f"build {variant}", total=len(units), info="")
        for unit in units:
            bar.update(task, info=unit)
            src = m.verify(unit)
            entry = m.graphs[unit]
            fields: dict[str, Any] = {k: entry[k] for k in ("role", "index", "inputs", "outputs")}
            onnx_out = out / f"{unit}.onnx"
            precision = spec.precision
            if not tensorrt:
                job = _UnitJob(m, unit, src, onnx_out, calib, calib_method, tolerance, errors, kept_fp32)
                precision = ORT_UNIT_BUILDERS[variant](job) or precision
            else:
                graphs[f"{variant}/{unit}"] = trt_mod.build_unit(m, unit, precision, out, calib, calib_method,
                                                                 tolerance, trt_options, errors, kept_fp32)
                rename[unit] = f"{variant}/{unit}"
                bar.advance(task)
                continue
            _ort_offline_optimize(onnx_out)
            graphs[f"{variant}/{unit}"] = (onnx_out.name, {**fields, "precision": precision, "format": "onnx",
                                                           "ort_optimized": "CPUExecutionProvider",
                                                           **({"rel_error": errors[unit]} if unit in errors else {})})
            rename[unit] = f"{variant}/{unit}"
            bar.advance(task)
    sched = Schedule(rename[base.embeddings], [rename[n] for n in base.layers], [rename[n] for n in base.ramps])
    info: dict[str, Any] = {"backend": "tensorrt" if tensorrt else "onnx", "precision": spec.precision}
    if errors:
        info["rel_error"] = errors
        info["kept_fp32"] = kept_fp32
        info["summary"] = f"max rel. error {max(errors.values()):.3f}, kept in FP32: {kept_fp32 or 'none'}"
    if tensorrt:
        info.pop("kept_fp32", None)  # TensorRT INT8 falls back to FP16 first: kept_higher says which
        info["scratch_bytes"] = max(int(f["scratch_bytes"]) for _, f in graphs.values())  # the one shared buffer
        info["kept_higher"] = {u: f["precision"] for u, (_, f) in zip(units, graphs.values(), strict=True)
                               if f["precision"] != info["precision"]}
        if errors:
            info["summary"] = (f"max rel. error {max(errors.values()):.3f}, scratch "
                               f"{info['scratch_bytes'] / 1e6:.1f} MB, kept higher: {info['kept_higher'] or 'none'}")
    return graphs, sched, info


# --- fused layer + ramp ----------------------------------------------------------------------

FUSED_ATOL = 1e-5  # a fused graph runs the same kernels on the same weights as its two parts


def _build_fused(m: Manifest, spec: registry.VariantSpec, out: Path
                 ) -> tuple[dict[str, tuple[str, dict[str, Any]]], Schedule, dict[str, Any]]:
    """A fused variant: its source variant's layer i and ramp i as one graph (embeddings copied as they are)."""
    from nanotrt.pipeline.plan import compose, probe_feeds, segment_error

    variant, src_variant = spec.name, str(spec.source)
    base = m.schedule(src_variant)
    graphs: dict[str, tuple[str, dict[str, Any]]] = {}
    emb = m.graphs[base.embeddings]
    for f in [emb["file"], *([emb["data"]["file"]] if "data" in emb else [])]:
        shutil.copy2(m.root / f, out / Path(f).name)
    keep = ("role", "index", "inputs", "outputs", "precision", "format", "ort_optimized")
    graphs[f"{variant}/embeddings"] = (Path(emb["file"]).name, {k: emb[k] for k in keep if k in emb})
    names: list[str] = []
    worst = 0.0
    with progress() as bar:
        job = bar.add_task(f"build {variant}", total=m.num_layers, info="")
        for i, (lay, ramp) in enumerate(zip(base.layers, base.ramps, strict=True)):
            bar.update(job, info=f"layer {i}")
            dst = out / f"fused_{i:02d}.onnx"
            # One graph computing layer i and its ramp: saves a session call per layer (ort_load_options.md).
            compose([m.verify(lay), m.verify(ramp)], dst, keep_hidden=True)
            feeds = probe_feeds(m.graphs[lay]["inputs"], int(m.data["hidden_size"]), 2)
            worst = max(worst, segment_error(dst, [m.path(lay), m.path(ramp)], feeds))
            entry, r_entry = m.graphs[lay], m.graphs[ramp]
            precision = entry["precision"] if entry["precision"] == r_entry["precision"] else "mixed"
            graphs[f"{variant}/fused_{i:02d}"] = (dst.name, {
                "role": "layer+ramp", "index": i, "inputs": entry["inputs"],
                "outputs": entry["outputs"] + r_entry["outputs"], "precision": precision, "format": "onnx",
                "ort_optimized": entry.get("ort_optimized")})
            names.append(f"{variant}/fused_{i:02d}")
            bar.advance(job)
    if worst > FUSED_ATOL:
        raise NanotrtError(f"fused graphs of {src_variant} differ from their parts by {worst:.2e} "
                           f"(> {FUSED_ATOL}): report this as a nanotrt bug")
    sched = Schedule(f"{variant}/embeddings", names, names)
    info = m.data["variants"][src_variant]
    return graphs, sched, {"backend": "onnx", "precision": info.get("precision"), "fused_from": src_variant,
                           "summary": f"max abs diff vs unfused {worst:.1e}"}
