"""Device-side tokenization through the `tokenizers` library from the artifact's tokenizer.json.

No torch, no transformers: export converts every family's tokenizer (WordPiece, BPE, SentencePiece)
into one tokenizer.json that this class reads.

Bad input: an empty (or whitespace-only) text or pair is refused with its index rather than classified
as nothing; texts longer than the artifact's ``max_length`` are truncated (as in training) and counted
in ``truncated``, so a caller can say how many were cut (the CLI prints one warning line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError


class Tokenizer:
    def __init__(self, path: Path, max_length: int = 128, pad_id: int = 0, pad_token: str = "[PAD]",
                 vocab_size: int | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        if not Path(path).is_file():
            raise NanotrtError(f"tokenizer file {path} is missing: re-run `nanotrt export`")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - a damaged tokenizer.json -> one clear line
            raise NanotrtError(f"cannot read tokenizer file {path} ({str(e).splitlines()[0][:120]}): "
                               "re-run `nanotrt export`") from e
        n = self._tok.get_vocab_size(with_added_tokens=True)
        if vocab_size is not None and n > vocab_size:
            # Ids past the embedding table would index out of range (or read another token's row).
            raise NanotrtError(f"tokenizer file {path} has {n} tokens but the model's embedding table has "
                               f"{vocab_size} rows: it is not this model's tokenizer; re-export with the model's "
                               "own tokenizer files")
        self._tok.enable_truncation(max_length=max_length)
        # Pad to the longest in the batch (right padding); runtime compaction relies on right padding.
        self._tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
        self.max_length = max_length
        self.truncated = 0  # inputs cut to max_length since construction (or the caller's last reset)

    @classmethod
    def from_manifest(cls, root: Path, info: dict[str, Any]) -> Tokenizer:
        vocab = info.get("vocab_size")
        return cls(Path(root) / info["file"], int(info["max_length"]), int(info["pad_id"]), str(info["pad_token"]),
                   int(vocab) if vocab is not None else None)

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if pairs is not None and len(pairs) != len(texts):
            raise NanotrtError(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        check_texts(texts, "text")
        if pairs is not None:
            check_texts(pairs, "pair")
        items: list[Any] = list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)
        encs = self._tok.encode_batch(items)
        self.truncated += sum(1 for e in encs if e.overflowing)
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }


def check_texts(texts: Sequence[str], what: str = "text") -> None:
    """Refuse non-strings and empty / whitespace-only strings, naming the first one (0-based index in the
    batch the runner tokenizes; the CLI checks its inputs earlier, by line number)."""
    for i, t in enumerate(texts):
        where = what if len(texts) == 1 else f"{what} {i} of {len(texts)} in this batch"
        if not isinstance(t, str):
            raise NanotrtError(f"{where} is a {type(t).__name__}, not a string: pass text")
        if not t.strip():
            raise NanotrtError(f"{where} is empty (or only whitespace): there is nothing to classify; "
                               "drop it or give it some text")
