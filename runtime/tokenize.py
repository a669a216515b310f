"""Device-side tokenization through the `tokenizers` library from the artifact's tokenizer.json.

No torch, no transformers: export converts every family's tokenizer (WordPiece, BPE, SentencePiece)
into one tokenizer.json that this class reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError


class Tokenizer:
    def __init__(self, path: Path, max_length: int = 128, pad_id: int = 0, pad_token: str = "[PAD]"):
        from tokenizers import Tokenizer as HFTokenizer

        if not Path(path).is_file():
            raise NanotrtError(f"tokenizer file {path} is missing: re-run `nanotrt export`")
        self._tok = HFTokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_length)
        # Pad to the longest in the batch (right padding); runtime compaction relies on right padding.
        self._tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
        self.max_length = max_length

    @classmethod
    def from_manifest(cls, root: Path, info: dict[str, Any]) -> Tokenizer:
        return cls(Path(root) / info["file"], int(info["max_length"]), int(info["pad_id"]), str(info["pad_token"]))

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if pairs is not None and len(pairs) != len(texts):
            raise NanotrtError(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        items: list[Any] = list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)
        encs = self._tok.encode_batch(items)
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
