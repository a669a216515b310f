"""Variants: the named ways to run an artifact, as types in one registry.

A variant is a full schedule in the manifest (``variants.<name>``); what kind of thing it is lives here:
which backend runs it, at which precision, how it is made (exported, built, fused from another variant,
planned into segments), and where it ranks when a run names no variant. ``Manifest.best_variant`` is the one
resolver (runner, ``profile``, ``bench``, ``build`` and the CLI all ask it); build code registers one builder
per spec (``pipeline/build.py``). Nothing outside this file parses a variant name: a new kind of variant is
one ``register(...)`` call here plus its builder.

Ranks, lowest first within (backend, precision): a plan (exit-aware segments, `nanotrt plan`) before the
fused per-layer graphs (one call per layer) before the per-layer built graphs (optimized offline, weights as
external data: several times faster to load per swap, benchmarks/results/ort_load_options.md) before the
exported graphs. INT8: static Q/DQ (calibrated) before ORT dynamic. Precision is never changed silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nanotrt.runtime.errors import NanotrtError

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("onnxruntime", "tensorrt", "torch")
KINDS = ("exported", "built", "fused", "plan", "swap")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    backends: tuple[str, ...]  # who runs it (torch: the eager reference, which reads only the roles)
    precision: str
    kind: str  # exported | built | fused | plan | swap
    rank: int  # preference within (backend, precision): lower runs first
    source: str | None = None  # the variant it is derived from (fused, plan)
    quantization: str = ""  # int8 only: "static" (calibrated Q/DQ) or "dynamic"
    flags: str = ""  # the command line that makes it, after `nanotrt build ART` (plans: a whole command)

    @property
    def backend(self) -> str:
        """The backend whose engines it holds (the first one that runs it)."""
        return self.backends[0]

    @property
    def needs_calibration(self) -> bool:
        return self.quantization == "static"

    def command(self, artifact: object) -> str:
        if self.kind == "plan":
            return self.flags.replace("ART", str(artifact))
        if self.kind == "exported":
            return "nanotrt export MODEL_DIR -o " + str(artifact)
        return f"nanotrt build {artifact}{self.flags}"


_REGISTRY: dict[str, VariantSpec] = {}


def register(spec: VariantSpec) -> VariantSpec:
    assert spec.precision in PRECISIONS and spec.kind in KINDS and set(spec.backends) <= set(BACKENDS), spec
    assert spec.source is None or spec.source in _REGISTRY, f"{spec.name}: register {spec.source} first"
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> VariantSpec:
    """The spec of a variant name; an unknown name is one clear error."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise NanotrtError(f"unknown variant '{name}': nanotrt knows {', '.join(_REGISTRY)}")
    return spec


def known(name: str) -> bool:
    return name in _REGISTRY


def all_specs() -> list[VariantSpec]:
    return list(_REGISTRY.values())


def ranked(available: Iterable[str], precision: str, backend: str) -> list[str]:
    """The ``available`` variants that run ``precision`` on ``backend``, best first."""
    if precision not in PRECISIONS:
        raise NanotrtError(f"unknown precision '{precision}': use one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise NanotrtError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if not any(precision == s.precision and backend in s.backends for s in _REGISTRY.values()):
        raise NanotrtError(f"backend '{backend}' does not run {precision}: pick another precision or "
                           "name a variant (--variant)")
    have = set(available)
    specs = [s for s in _REGISTRY.values() if s.name in have and s.precision == precision and backend in s.backends]
    return [s.name for s in sorted(specs, key=lambda s: s.rank)]


def candidates(precision: str, backend: str) -> list[VariantSpec]:
    """Every registered variant for ``precision`` on ``backend``, best first (for error messages)."""
    return sorted((s for s in _REGISTRY.values() if s.precision == precision and backend in s.backends),
                  key=lambda s: s.rank)


def check_runs_on(name: str, backend: str) -> VariantSpec:
    spec = get(name)
    if backend not in spec.backends:
        raise NanotrtError(f"variant '{name}' runs on {' or '.join(spec.backends)}, not {backend}: name another "
                           "variant (--variant) or backend (--backend)")
    return spec


def build_targets(backend: str, fp16: bool, int8: bool, dynamic: bool, fused: bool,
                  swap: bool = False) -> list[VariantSpec]:
    """What ``nanotrt build`` makes for these flags, sources before what is derived from them."""
    if backend not in ("onnxruntime", "tensorrt"):
        raise NanotrtError(f"unknown build backend '{backend}': use onnxruntime or tensorrt")
    built = [s for s in _REGISTRY.values() if s.kind == "built" and s.backend == backend]

    def wanted(s: VariantSpec) -> bool:
        if s.precision == "int8":
            return (int8 and s.quantization == "static") or (dynamic and s.quantization == "dynamic")
        if s.precision == "fp16":
            return fp16
        # FP32: ORT always builds its optimized FP32; TensorRT only when no lower precision was asked
        return backend == "onnxruntime" or not (fp16 or int8)

    out = [s for s in built if wanted(s)]
    if fused:
        names = {s.name for s in out}
        out += [s for s in _REGISTRY.values() if s.kind == "fused" and s.source in names]
    if swap:  # of every variant made above (built and fused)
        names = {s.name for s in out}
        out += [s for s in _REGISTRY.values() if s.kind == "swap" and s.source in names]
    return out


def plan_of(source: str) -> VariantSpec | None:
    """The plan variant made from ``source`` (None if plans of it are not registered)."""
    return next((s for s in _REGISTRY.values() if s.kind == "plan" and s.source == source), None)


def _builtin() -> None:
    ort, trt = ("onnxruntime",), ("tensorrt",)
    register(VariantSpec("fp32", ("onnxruntime", "torch"), "fp32", "exported", 30))
    register(VariantSpec("ort-fp32", ort, "fp32", "built", 20))
    register(VariantSpec("ort-fp16", ort, "fp16", "built", 20, flags=" --fp16"))
    register(VariantSpec("ort-int8", ort, "int8", "built", 20, quantization="static", flags=" --int8 --calib-task TASK"))
    register(VariantSpec("ort-int8-dynamic", ort, "int8", "built", 30, quantization="dynamic", flags=" --dynamic"))
    register(VariantSpec("ort-fp32-fused", ort, "fp32", "fused", 10, source="ort-fp32", flags=" --fused"))
    register(VariantSpec("ort-int8-fused", ort, "int8", "fused", 10, source="ort-int8", quantization="static",
                         flags=" --int8 --calib-task TASK --fused"))
    register(VariantSpec("ort-int8-dynamic-fused", ort, "int8", "fused", 25, source="ort-int8-dynamic",
                         quantization="dynamic", flags=" --dynamic --fused"))
    register(VariantSpec("trt-fp32", trt, "fp32", "built", 20, flags=" --backend tensorrt"))
    register(VariantSpec("trt-fp16", trt, "fp16", "built", 20, flags=" --backend tensorrt --fp16"))
    register(VariantSpec("trt-int8", trt, "int8", "built", 20, quantization="static",
                         flags=" --backend tensorrt --int8 --calib-task TASK"))
    _register_swaps()
    # Plans (`nanotrt plan`): segments of consecutive layers, live ramps only where exits pay.
    for src in ("ort-fp32", "ort-int8", "ort-int8-dynamic", "trt-fp32", "trt-fp16", "trt-int8"):
        s = _REGISTRY[src]
        register(VariantSpec(f"{src}-plan", s.backends, s.precision, "plan", 0 if s.quantization != "dynamic" else 1,
                             source=src, quantization=s.quantization,
                             flags=f"nanotrt plan ART --precision {s.precision}"
                                   + (" --backend tensorrt" if s.backend == "tensorrt" else "")
                                   + (" --dynamic" if s.quantization == "dynamic" else "")))


def _register_swaps() -> None:
    """Swap variants (`nanotrt build --swap`, pipeline/swap_build.py): the graphs of a built or fused ORT variant
    as one session per layer structure + one mapped weight file per graph, so a swap maps weights instead of
    building a session (benchmarks/results/swap_cost.md). Ranked before their source: SWAP_RANK."""
    for src in ("ort-fp32", "ort-int8", "ort-int8-dynamic", "ort-fp32-fused", "ort-int8-fused", "ort-int8-dynamic-fused"):
        s = _REGISTRY[src]
        register(VariantSpec(f"{src}-swap", s.backends, s.precision, "swap", s.rank + SWAP_RANK, source=src,
                             quantization=s.quantization, flags=s.flags + " --swap"))


SWAP_RANK = -1  # added to the source's rank
_builtin()
