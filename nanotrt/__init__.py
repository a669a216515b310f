"""nanotrt: BERT-family classifiers cut into per-layer engines, streamed under a memory budget with early exit.

Two halves under one namespace:

- device runtime (core install, no torch): ``nanotrt.runtime`` (artifact, tokenizer, exits, residency,
  runner, backend interface) and ``nanotrt.engines`` (ONNX Runtime, TensorRT);
- offline tools (extras ``export``, ``train``, ``bench``): ``nanotrt.pipeline`` (model, export, GLUE,
  training, build, bench) and ``nanotrt.calibration``.

In the repository the subpackages are the top-level folders ``runtime/``, ``engines/``, ``pipeline/``,
``calibration/``; setuptools maps them under ``nanotrt`` (``package-dir`` in pyproject.toml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The device backends (onnxruntime, tensorrt) register by name here, before any runner asks for one; their
# modules load only when a backend is made. `import nanotrt.pipeline` adds the offline `torch` backend.
import nanotrt.engines  # noqa: E402, F401

if TYPE_CHECKING:
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.runner import Runner

# Lazy, so `import nanotrt` costs nothing and the CLI can import it before numpy/onnxruntime.
_PUBLIC = {"Runner": "nanotrt.runtime.runner", "Manifest": "nanotrt.runtime.artifact",
           "NanotrtError": "nanotrt.runtime.errors"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nanotrt' has no attribute {name!r}")


__all__ = ["Manifest", "NanotrtError", "Runner", "__version__"]
