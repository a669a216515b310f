from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # make_tiny_artifact

from tinymodels import FAMILIES, make_tiny  # noqa: E402

# The suite runs the default in-process: ORT's process-wide thread pool, created before the first test (the
# fixture below), so every session built afterwards (export, build and calibration checks, quantization,
# bench rows) meets it as it would in a user's process.
os.environ.pop("NANOTRT_ORT_THREAD_POOL", None)

# Committed, made by scripts/make_tiny_artifact.py: lets the runtime tests run in a core install (no torch).
TINY_ARTIFACT = Path(__file__).parent / "fixtures" / "tiny-artifact"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi there", "A somewhat longer sentence, with punctuation!"]
PAIRS = ["It was quick.", "Hello back to you, my friend, how are you doing today?", "Short."]


@pytest.fixture(scope="session", autouse=True)
def shared_thread_pool() -> None:
    from nanotrt.engines.onnxruntime import OrtBackend

    assert OrtBackend().shared_pool, "ORT's process-wide pool could not be created"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("models")
    return {fam: make_tiny(fam, root / fam) for fam in FAMILIES}


@pytest.fixture(scope="session")
def artifacts(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nanotrt.pipeline.export import export_model

    root = tmp_path_factory.mktemp("artifacts")
    return {fam: export_model(d, root / fam).root for fam, d in tiny_dirs.items()}


def interrupt_on_call(monkeypatch: pytest.MonkeyPatch, module: object, name: str, n: int = 3) -> None:
    """Replace ``module.name`` so that its ``n``-th call raises KeyboardInterrupt (a Ctrl-C mid-run)."""
    calls = {"n": 0}
    real = getattr(module, name)

    def wrapped(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)
