"""ONNX Runtime backend (CPU here; CUDA/TensorRT execution providers where installed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend
from nanotrt.runtime.errors import NanotrtError


@dataclass
class OrtEngine:
    name: str
    session: Any
    input_names: list[str]
    output_names: list[str]
    nbytes: int


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None, providers: list[str] | None = None, verify: bool = True,
                 spin: bool = False, prepack: bool = True):
        import onnxruntime as ort

        self._ort = ort
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.verify = verify
        self.spin = spin
        self.prepack = prepack

    def configure(self, swapping: bool) -> None:
        # Prepacking re-lays out GEMM weights at load: on a built BERT-base layer it is most of the load
        # time (benchmarks/results/ort_load_options.md: 19.6 -> 1.9 ms load, 11.3 -> 13.9 ms run at 128
        # tokens). Worth it only when engines stay resident.
        self.prepack = not swapping

    def _options(self, entry: dict[str, Any]) -> Any:
        so = self._ort.SessionOptions()
        # The CPU arena keeps freed blocks for reuse; a streaming runtime must give memory back.
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
        level = self._ort.GraphOptimizationLevel
        # Graphs optimized offline by `nanotrt build` load faster with nothing left to do.
        optimized = entry.get("ort_optimized") in self.providers
        so.graph_optimization_level = level.ORT_DISABLE_ALL if optimized else level.ORT_ENABLE_EXTENDED
        so.log_severity_level = 3
        if not self.spin:
            # Every session has its own intra-op pool; spinning idle threads of 25 sessions steal the cores
            # from the one that runs (ort_load_options.md, BERT-base, 2 cores: 414 -> 152 ms per example).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not self.prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        return so

    def load(self, manifest: Manifest, name: str) -> OrtEngine:
        entry = manifest.graphs[name]
        if entry.get("format") != "onnx":
            raise NanotrtError(f"graph {name} is a {entry.get('format')} file; the onnxruntime backend runs onnx graphs")
        path = manifest.verify(name) if self.verify else manifest.path(name)
        try:
            sess = self._ort.InferenceSession(str(path), self._options(entry), providers=self.providers)
        except Exception as e:  # noqa: BLE001 - corrupted graph -> one clear line
            raise NanotrtError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
        return OrtEngine(name, sess, [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()],
                         int(entry["bytes"]))

    def run(self, engine: OrtEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = engine.session.run(None, {k: feeds[k] for k in engine.input_names})
        return dict(zip(engine.output_names, outs, strict=True))

    def release(self, engine: OrtEngine) -> None:
        # No heap trim per swap: the next engine reuses the freed blocks (RSS stays bounded by the budget),
        # and trimming then re-faulting the pages costs time (ort_load_options.md, 2-layer budget:
        # 288 -> 203 ms per example). The cache trims when it is cleared.
        engine.session = None
