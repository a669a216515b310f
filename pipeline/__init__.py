"""Offline tools: family adapters, off-ramp model, export, GLUE, training, build, bench (the extras).

Importing this package registers the offline backend ``torch`` (the PyTorch eager reference) with the runtime's
backend registry; torch itself is imported only when such a backend is made."""

from __future__ import annotations

from typing import Any

from nanotrt.runtime.backend import Backend, register_backend
from nanotrt.runtime.errors import NanotrtError


def _torch(**options: Any) -> Backend:
    try:
        from nanotrt.pipeline.torch_backend import TorchBackend

        return TorchBackend(**options)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("torch", "transformers", "safetensors"):
            raise NanotrtError(f"the torch backend needs the 'export' extra ({e.name} is not installed): "
                               "pip install 'nanotrt[export]'") from e
        raise


register_backend("torch", _torch)
