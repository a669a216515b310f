"""Device-side tokenization through the `tokenizers` library from the artifact's tokenizer.json.

No torch, no transformers: export converts every family's tokenizer (WordPiece, BPE, SentencePiece)
into one tokenizer.json that this class reads (after its sha256 is checked against the manifest).

Bad input: an empty (or whitespace-only) text or pair is refused with its index rather than classified
as nothing; a non-string is refused with its type. Texts longer than the artifact's ``max_length`` tokens are
truncated (as in training) and counted in ``truncated``, so a caller can say how many were cut (the CLI
prints one warning line).

Memory is bounded by the input, not by the tokenizer: a text is cut to ``max_chars`` characters before it is
tokenized (default ``CHARS_PER_TOKEN`` x max_length, far more than max_length tokens of any natural text
need, so only what the model would never see is dropped), and truncation is done here, linearly. The
`tokenizers` library's own pair truncation builds every combination of the two sides' overflow windows,
quadratic in the input: two 100k-word texts needed more than 22 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError

if TYPE_CHECKING:
    from nanotrt.runtime.artifact import Manifest

CHARS_PER_TOKEN = 32  # the default input bound per token of max_length (English averages ~4-6 per token)


class Tokenizer:
    def __init__(self, path: Path, max_length: int = 128, pad_id: int = 0, pad_token: str = "[PAD]",
                 vocab_size: int | None = None, max_chars: int | None = None):
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
        self._tok.no_truncation()  # done here (linear); padding too: right padding, compaction relies on it
        self._tok.no_padding()
        self.max_length, self.pad_id = max_length, pad_id
        self.max_chars = max_chars or CHARS_PER_TOKEN * max_length
        self._templates = {False: self._template(False), True: self._template(True)}
        self.truncated = 0  # inputs cut since construction (or the caller's last reset)

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_chars: int | None = None) -> Tokenizer:
        """The artifact's tokenizer, its file checked against the manifest's sha256 first."""
        info = manifest.tokenizer
        vocab = info.get("vocab_size")
        return cls(manifest.tokenizer_file(), int(info["max_length"]), int(info["pad_id"]), str(info["pad_token"]),
                   int(vocab) if vocab is not None else None, max_chars)

    def _template(self, pair: bool) -> list[tuple[int | None, int, int]]:
        """The post-processor's layout as (sequence or None for a special token, token id, type id), from one
        probe encoding: e.g. BERT's pair is [CLS] A [SEP] B [SEP], RoBERTa's <s> A </s></s> B </s>."""
        probe = self._tok.encode("a", "b" if pair else None, add_special_tokens=True)
        parts: list[tuple[int | None, int, int]] = []
        for tid, typ, seq in zip(probe.ids, probe.type_ids, probe.sequence_ids, strict=True):
            if seq is None:
                parts.append((None, tid, typ))
            elif not parts or parts[-1][0] != seq:
                parts.append((seq, -1, typ))
        return parts

    def _lengths(self, n1: int, n2: int | None) -> tuple[int, int]:
        """How many tokens of each side fit: `tokenizers`' longest-first rule, computed instead of applied."""
        room = self.max_length - sum(1 for s, _, _ in self._templates[n2 is not None] if s is None)
        if n2 is None:
            return min(n1, room), 0
        if n1 + n2 <= room:
            return n1, n2
        short, long_ = sorted((n1, n2))
        long_ = short if short > room else max(short, room - short)
        if short + long_ > room:
            short, long_ = room // 2, room // 2 + room % 2
        return (long_, short) if n1 > n2 else (short, long_)

    def _cut(self, texts: Sequence[str]) -> list[str]:
        cut = [t if len(t) <= self.max_chars else t[: self.max_chars] for t in texts]
        return cut

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if pairs is not None and len(pairs) != len(texts):
            raise NanotrtError(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        check_texts(texts, "text")
        if pairs is not None:
            check_texts(pairs, "pair")
        long = [len(t) > self.max_chars or (pairs is not None and len(pairs[i]) > self.max_chars)
                for i, t in enumerate(texts)]
        firsts = self._tok.encode_batch(self._cut(texts), add_special_tokens=False)
        seconds = self._tok.encode_batch(self._cut(pairs), add_special_tokens=False) if pairs is not None else None
        template = self._templates[pairs is not None]
        rows: list[tuple[list[int], list[int]]] = []
        for i, a in enumerate(firsts):
            b = seconds[i] if seconds is not None else None
            n1, n2 = self._lengths(len(a.ids), None if b is None else len(b.ids))
            sides = [(a.ids[:n1], n1 < len(a.ids))] + ([] if b is None else [(b.ids[:n2], n2 < len(b.ids))])
            ids: list[int] = []
            types: list[int] = []
            for seq, tid, typ in template:
                part = [tid] if seq is None else sides[seq][0]
                ids += part
                types += [typ] * len(part)
            rows.append((ids, types))
            self.truncated += long[i] or any(cut for _, cut in sides)
        width = max(len(ids) for ids, _ in rows)
        out = {"input_ids": np.full((len(rows), width), self.pad_id, dtype=np.int64),
               "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
               "token_type_ids": np.zeros((len(rows), width), dtype=np.int64)}
        for r, (ids, types) in enumerate(rows):  # right padding: runtime compaction relies on it
            out["input_ids"][r, : len(ids)] = ids
            out["attention_mask"][r, : len(ids)] = 1
            out["token_type_ids"][r, : len(ids)] = types
        return out


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


def as_inputs(texts: Any, pairs: Any = None) -> tuple[list[str], list[str] | None]:
    """The library's ``texts`` / ``pairs`` as lists: one string is one text (and then one string is its pair);
    a string of pairs for many texts is an error, not one pair per character."""
    one = isinstance(texts, str)
    texts = [texts] if one else _sequence(texts, "texts")
    if pairs is not None:
        if isinstance(pairs, str) and not one:
            raise NanotrtError(f"pairs is one string for {len(texts)} texts: give a list with one pair per text")
        pairs = [pairs] if isinstance(pairs, str) else _sequence(pairs, "pairs")
        if len(pairs) != len(texts):
            raise NanotrtError(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
    for what, items in (("texts", texts), ("pairs", pairs or [])):
        i = next((i for i, t in enumerate(items) if not isinstance(t, str) or not t or t.isspace()), None)
        if i is not None and not isinstance(items[i], str):
            raise NanotrtError(f"{what}[{i}] is a {type(items[i]).__name__}, not a string: pass text")
        if i is not None:  # by the caller's index: the runner may batch inputs in another order
            raise NanotrtError(f"{what}[{i}] is empty (or only whitespace): there is nothing to classify; drop it "
                               "or give it some text")
    return texts, pairs


def _sequence(x: Any, what: str) -> list[Any]:
    if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 1):
        return list(x)
    raise NanotrtError(f"{what} should be a string or a list of strings, not {type(x).__name__}")


def check_count(value: Any, what: str) -> int:
    """A whole number >= 1 (batch and block sizes): not a bool, a float or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise NanotrtError(f"{what} must be >= 1 (a whole number), not {value!r}"[:120])
    return int(value)
