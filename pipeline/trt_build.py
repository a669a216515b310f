"""Building TensorRT plans (offline; `nanotrt build --backend tensorrt`). The device side only loads and runs
them (engines/tensorrt.py).

Every network is **strongly typed**: the precision is the ONNX graph's own, so the same code builds on
TensorRT 10.1 to 11.x (11 removed the FP16/INT8 builder flags and calibrators). Per graph, the ONNX parsed
is, in order of preference (``candidates``):

- INT8: ORT's calibrated Q/DQ on the GEMMs (weights per channel, activations per tensor, no bias
  quantization), then converted to FP16 like the FP16 graph, so everything that is not a GEMM runs as the
  FP16 path runs it (the mixed INT8/FP16 engine NVIDIA's own tooling builds);
- FP16: FP16 weights and compute, FP32 inputs/outputs, LayerNorm in FP32;
- FP32: the exported graph (TF32 off).

A graph falls back to the next candidate when TensorRT cannot build it or, for INT8, when the plan's
measured error against the FP32 graph exceeds the tolerance. Plans are built through Polygraphy's loaders;
the timing cache is shared by a build and kept only for the GPU and TensorRT that made it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.engines import tensorrt as te
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import write_json

# TensorRT 11 has no `ILayer.precision_is_set`; Polygraphy reads it unguarded before 0.50.3 (AttributeError).
POLYGRAPHY_MIN = (0, 50, 3)
# Part of every TensorRT variant's options: a change of what the build makes rebuilds instead of "up to
# date" (2: no INT32 bias DequantizeLinear, INT8 as Q/DQ over the FP16 graph, fallback on build failure).
TRT_BUILDER_VERSION = 2
TIMING_CACHE = "trt-timing.cache"  # in the artifact, shared by every plan of every build
TIMING_CACHE_ID = "trt-timing.json"  # the GPU and TensorRT that made it

Shape = tuple[int, int]  # (batch, seq)


def require_builder() -> Any:
    """The full TensorRT package (with a Builder) within the supported versions, and a Polygraphy that
    drives it; one clear line for whatever is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NanotrtError(te.INSTALL_HINT) from e
    if not hasattr(trt, "Builder"):
        raise NanotrtError(te.INSTALL_HINT + " (building plans needs the full `tensorrt` package, not only "
                           "the lean runtime)")
    te.check_version(str(trt.__version__))
    try:
        import polygraphy
    except ImportError as e:
        raise NanotrtError("building TensorRT plans needs Polygraphy: pip install 'nanotrt[tensorrt-build]'") from e
    have = tuple(int(x) for x in str(polygraphy.__version__).split(".")[:3] if x.isdigit())
    if have < POLYGRAPHY_MIN:
        raise NanotrtError(f"Polygraphy {polygraphy.__version__} is too old for TensorRT {trt.__version__} "
                           f"(it fails on TensorRT 11): pip install 'polygraphy>={'.'.join(map(str, POLYGRAPHY_MIN))}'")
    return trt


# --------------------------------------------------------------------------------------------
# Build options: plain JSON (they are stored in the manifest as the variant's options)
# --------------------------------------------------------------------------------------------

def parse_shape(text: str) -> Shape:
    try:
        b, s = (int(x) for x in text.lower().split("x"))
    except ValueError as e:
        raise NanotrtError(f"cannot read shape '{text}': use BATCHxSEQ, e.g. 8x128") from e
    if b < 1 or s < 1:
        raise NanotrtError(f"shape '{text}' must be positive: use BATCHxSEQ, e.g. 8x128")
    return b, s


@dataclass(frozen=True)
class BuildOptions:
    """The one optimization profile (batch x seq, min / opt / max) and builder settings of a TRT variant.
    ``max_shape`` None = (32, the tokenizer's max_length): no input is ever longer, and the profile max
    sizes the scratch memory. ``opt_shape`` None = (1, 128) within the max."""

    min_shape: Shape = (1, 1)
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_mb: int = 1024
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    def resolve(self, max_length: int) -> BuildOptions:
        """Fill the defaults from the artifact and check the profile; one clear line if it is wrong."""
        mx = self.max_shape or (32, max_length)
        opt = self.opt_shape or (1, min(128, mx[1]))
        if not (all(a <= b for a, b in zip(self.min_shape, opt, strict=True))
                and all(a <= b for a, b in zip(opt, mx, strict=True))):
            raise NanotrtError(f"TensorRT profile needs min <= opt <= max per dimension, got min "
                               f"{self.min_shape}, opt {opt}, max {mx}")
        if mx[1] > max_length:
            raise NanotrtError(f"--max-shape sequence {mx[1]} exceeds the artifact's tokenizer max_length "
                               f"{max_length}: no input is longer, and the larger profile only grows the "
                               f"scratch memory; use --max-shape {mx[0]}x{max_length}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise NanotrtError("--exclude-lean-runtime needs --version-compatible (TensorRT rule)")
        return BuildOptions(tuple(self.min_shape), tuple(opt), tuple(mx), self.workspace_mb,  # type: ignore[arg-type]
                            self.version_compatible, self.exclude_lean_runtime)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BuildOptions:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("min_shape", "opt_shape", "max_shape"):
            if known.get(k) is not None:
                known[k] = tuple(int(x) for x in known[k])
        return cls(**known)


def dims(sig: dict[str, Any], bs: Shape) -> tuple[int, ...]:
    """Concrete dims of an I/O signature: symbolic batch / seq dims from ``bs``, static dims kept."""
    return tuple(bs[i] if isinstance(d, str) and i < 2 else int(d) for i, d in enumerate(sig["shape"]))


def io_bytes(entry: dict[str, Any], max_shape: Shape | None) -> dict[str, int]:
    """Bytes of each input and output of a graph at the profile's maximum shape (I/O buffers: outputs
    keyed ``out:NAME`` because a graph's output may share its name with the next graph's input)."""
    assert max_shape is not None, "resolve() the build options first"
    out = {}
    for key, prefix in (("inputs", ""), ("outputs", "out:")):
        for sig in entry[key]:
            out[prefix + sig["name"]] = int(np.prod(dims(sig, max_shape))) * np.dtype(sig["dtype"]).itemsize
    return out


# --------------------------------------------------------------------------------------------
# Setup: version gate, options, timing cache
# --------------------------------------------------------------------------------------------

def setup(m: Manifest, trt_options: dict[str, Any] | None) -> dict[str, Any]:
    """Version gate, then the build options as plain JSON (they become the variant's manifest options;
    the TensorRT version is part of them, so a TensorRT upgrade rebuilds instead of "up to date")."""
    trt = require_builder()
    opts = BuildOptions.from_json(trt_options or {}).resolve(int(m.tokenizer["max_length"]))
    check_timing_cache(m.root, {"tensorrt": str(trt.__version__), **device_identity()})
    return {**opts.to_json(), "tensorrt": str(trt.__version__), "trt_builder": TRT_BUILDER_VERSION}


def device_identity(device: int = 0) -> dict[str, Any]:
    """The GPU a timing cache (and a plan) is specific to: its name and compute capability."""
    cudart = te.load_cudart()
    props = te.cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def check_timing_cache(root: Path, made_for: dict[str, Any]) -> None:
    """TensorRT silently ignores a timing cache made on another GPU or TensorRT version (Polygraphy loads it
    with ``ignore_mismatch=False`` and does not check the result), and Polygraphy then merges the old cache
    into the new one. So the cache carries the identity that made it; on a mismatch: a warning, a fresh cache."""
    cache, ident = root / TIMING_CACHE, root / TIMING_CACHE_ID
    if cache.is_file():
        try:
            made = json.loads(ident.read_text())
        except (OSError, ValueError):
            made = None
        if made != made_for:
            warnings.warn(f"the TensorRT timing cache {cache} was made for {made or 'an unknown GPU/TensorRT'}, "
                          f"not this {made_for}: TensorRT would ignore it; starting a fresh one", stacklevel=2)
            cache.unlink()
    write_json(ident, made_for)


# --------------------------------------------------------------------------------------------
# One plan (Polygraphy loaders; needs the full TensorRT package and a GPU)
# --------------------------------------------------------------------------------------------

def build_plan(onnx_path: Path, plan_path: Path, inputs: list[dict[str, Any]], options: BuildOptions,
               timing_cache: Path) -> None:
    """Parse ``onnx_path`` as a strongly typed network and write its serialized engine to ``plan_path``.
    The precision is the ONNX's own (FP32 / FP16 / Q-DQ); the timing cache is shared by a whole build."""
    trt = require_builder()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    assert options.max_shape is not None and options.opt_shape is not None, "resolve() the options first"
    profile = Profile()
    for sig in inputs:
        profile.add(sig["name"], *(dims(sig, s) for s in (options.min_shape, options.opt_shape, options.max_shape)))
    config = CreateConfig(
        tf32=False,  # FP32 layers compute in FP32 (parity with the ONNX Runtime reference)
        profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20},
        load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
        version_compatible=options.version_compatible or None,
        exclude_lean_runtime=options.exclude_lean_runtime or None,
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        serialized = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    except PolygraphyException as e:
        raise NanotrtError(f"TensorRT cannot build {onnx_path.name}: {str(e).splitlines()[0][:300]} "
                           "(the TensorRT log above has the details)") from e
    except AttributeError as e:  # a Polygraphy older than this TensorRT (require_builder checks the known case)
        raise NanotrtError(f"Polygraphy cannot drive TensorRT {trt.__version__} ({e}): pip install -U "
                           f"'polygraphy>={'.'.join(map(str, POLYGRAPHY_MIN))}'") from e
    plan_path.write_bytes(bytes(serialized))


def plan_info(plan_path: Path, options: BuildOptions) -> dict[str, Any]:
    """What the runtime must know about a plan before loading it: its scratch requirement (the engine's
    device_memory_size_v2 covers every profile shape up to the max). Read right after the build."""
    with te.TrtBackend(verify=False) as be:
        eng = be.open_plan(plan_path.read_bytes(), plan_path.stem, plan_path.stat().st_size,
                           version_compatible=options.version_compatible, lean=options.exclude_lean_runtime)
        return {"scratch_bytes": eng.scratch_bytes}


def plan_error(plan_path: Path, ref_onnx: Path, batches: list[dict[str, np.ndarray]], options: BuildOptions,
               limit: int = 8) -> float:
    """The plan's relative error against the FP32 ONNX graph on ONNX Runtime CPU: the measure (and the
    code) the ORT INT8 path uses for its fallback."""
    from nanotrt.calibration.quantize import relative_error

    with te.TrtBackend(verify=False) as be:
        eng = be.open_plan(plan_path.read_bytes(), plan_path.stem, plan_path.stat().st_size,
                           version_compatible=options.version_compatible, lean=options.exclude_lean_runtime)
        return relative_error(ref_onnx, lambda feeds: be.run(eng, feeds)[eng.outputs[0]], batches, limit)


# --------------------------------------------------------------------------------------------
# One graph: candidates in order of preference, fallback on build failure or error
# --------------------------------------------------------------------------------------------

def candidates(src: Path, precision: str, out: Path, unit: str, calib: Any, calib_method: str,
               input_names: list[str]) -> list[tuple[str, Path]]:
    """(precision, ONNX to parse) in order of preference, down to the exported FP32 graph: INT8 falls back
    to FP16 then FP32, FP16 to FP32 (only when TensorRT cannot build it), FP32 is what it is."""
    from nanotrt.calibration.quantize import convert_fp16, quantize_static_qdq

    cands: list[tuple[str, Path]] = []
    if precision == "int8":
        qdq = out / f"{unit}.qdq.onnx"
        if quantize_static_qdq(src, qdq, calib.batches(unit), input_names, calib_method, for_tensorrt=True):
            convert_fp16(qdq, qdq)  # Q/DQ GEMMs over the FP16 graph
            cands.append(("int8", qdq))
        else:
            qdq.unlink(missing_ok=True)  # nothing to quantize (embeddings): FP16 like the rest
    if precision in ("int8", "fp16"):
        fp16 = out / f"{unit}.fp16.onnx"
        convert_fp16(src, fp16)
        cands.append(("fp16", fp16))
    cands.append(("fp32", src))
    return cands


def in_profile(batches: list[dict[str, Any]], opts: BuildOptions) -> list[dict[str, Any]]:
    """Calibration batches cut to the profile's max batch, without those whose length is outside it."""
    assert opts.max_shape is not None
    (min_b, min_s), (b, s) = opts.min_shape, opts.max_shape
    return [{k: v[:b] for k, v in f.items()} for f in batches
            if min_s <= next(iter(f.values())).shape[1] <= s and len(next(iter(f.values()))) >= min_b]


def build_unit(m: Manifest, unit: str, precision: str, out: Path, calib: Any, calib_method: str,
               tolerance: float, trt_options: dict[str, Any], errors: dict[str, float],
               kept: list[str]) -> tuple[str, dict[str, Any]]:
    """Build one graph's plan. A candidate TensorRT cannot build falls back to the next one (the reason is
    recorded under ``fallback``); an INT8 plan is measured against the FP32 graph and falls back when it is
    off. Returns the plan's file name and its manifest fields."""
    src = m.verify(unit)
    entry = m.graphs[unit]
    opts = BuildOptions.from_json(trt_options)
    assert opts.max_shape is not None
    cands = candidates(src, precision, out, unit, calib, calib_method, [i["name"] for i in entry["inputs"]])
    plan = out / f"{unit}.plan"
    batches = in_profile(calib.batches(unit), opts) if calib is not None else []
    failed: dict[str, str] = {}
    for i, (prec, onnx_path) in enumerate(cands):
        last = i == len(cands) - 1
        try:
            build_plan(onnx_path, plan, entry["inputs"], opts, m.root / TIMING_CACHE)
        except NanotrtError as e:
            if last:
                raise
            failed[prec] = str(e)
            continue
        if precision != "int8" or not batches:
            break
        errors[unit] = plan_error(plan, src, batches, opts)
        if errors[unit] <= tolerance or last:
            break
    if cands[0][0] == precision and prec != precision:
        kept.append(unit)
    for _, path in cands:  # keep only the ONNX the plan was parsed from
        if path != onnx_path and path.parent == out:
            path.unlink(missing_ok=True)
    fields: dict[str, Any] = {k: entry[k] for k in ("role", "index", "inputs", "outputs")}
    fields.update(precision=prec, format="trt-plan", **plan_info(plan, opts),
                  io_bytes=io_bytes(entry, opts.max_shape),
                  # the ONNX the plan was parsed from, relative to the plan's folder (gpu_check compares them)
                  source_onnx=Path(os.path.relpath(onnx_path, out)).as_posix())
    if failed:
        fields["fallback"] = failed
    if unit in errors:
        fields["rel_error"] = errors[unit]
    return plan.name, fields

