"""PyTorch eager reference backend: runs the same schedule through the checkpoint kept in the artifact.

Not for devices (it imports torch and holds the whole model); it exists so that the runner, exit
policies and budgets can be checked against eager PyTorch with nothing else changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import Backend, check_threads
from nanotrt.runtime.errors import NanotrtError


@dataclass
class TorchEngine:
    name: str
    fn: Any
    nbytes: int


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, threads: int | None = None):
        import torch

        check_threads(threads)
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self._models: dict[str, Any] = {}

    def _model(self, manifest: Manifest) -> Any:
        key = str(manifest.root)
        if key not in self._models:
            from nanotrt.pipeline.model import load_model

            ckpt = manifest.data.get("checkpoint")
            if not ckpt:
                raise NanotrtError("this artifact has no PyTorch checkpoint: re-export with --torch-reference")
            self._models[key] = load_model(manifest.root / ckpt).eval()
        return self._models[key]

    def load(self, manifest: Manifest, name: str) -> TorchEngine:
        torch, m = self._torch, self._model(manifest)
        entry = manifest.graphs[name]
        role, idx = entry["role"], entry.get("index")
        t = torch.from_numpy
        if role == "embeddings":
            def fn(f: dict[str, np.ndarray]) -> dict[str, Any]:
                ids = t(f["input_ids"]) if "input_ids" in f else None
                tt = t(f["token_type_ids"]) if "token_type_ids" in f else None
                return {"hidden_states": m.embed(ids, tt, inputs_embeds=t(f["inputs_embeds"]))}
            module = m.encoder
        elif role == "layer":
            i = next(j for j in range(m.num_layers) if m.adapter.layer_graph_index(m.config, j) == idx)
            module = m.adapter.layer_module(m.encoder, i)

            def fn(f: dict[str, np.ndarray]) -> dict[str, Any]:
                return {"hidden_states_out": m.layer(i, t(f["hidden_states"]), t(f["attention_mask"]))}
        elif role == "ramp":
            module = m.ramps[idx]
            graph = m.ramp_graph(idx)  # logits, plus exit_prob for models with halting heads

            def fn(f: dict[str, np.ndarray]) -> dict[str, Any]:
                out = graph(t(f["hidden_states"]), t(f["attention_mask"]))
                return dict(zip(("logits", "exit_prob"), out, strict=True)) if m.cfg.exit_head else {"logits": out}
        else:
            raise NanotrtError(f"the torch backend cannot run graph role '{role}'")
        nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
        return TorchEngine(name, fn, int(nbytes))

    def run(self, engine: TorchEngine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._torch.inference_mode():
            return {k: v.numpy() for k, v in engine.fn(feeds).items()}

    def release(self, engine: TorchEngine) -> None:
        engine.fn = None
