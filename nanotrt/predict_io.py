"""What `nanotrt predict` reads and prints: inputs streamed line by line in bounded memory, outputs that
cannot be forged by the text they echo.

Reading (``-f FILE`` or ``-f -`` for stdin): one text per line, TAB before an optional pair (every line or
none, decided by the first). A line is read in chunks: of each side only the first ``max_chars`` characters
are kept (the tokenizer would cut the rest anyway, runtime/tokenize.py), so one huge line costs the same
memory as a short one; a "line" longer than ``MAX_LINE_BYTES`` is refused (``-f /dev/zero`` is no text).
Decoding is strict (an undecodable byte names its line) over the bytes kept. Blank lines are skipped and
counted; an empty side of a pair names its line.

Printing: plain lines escape backslashes and control characters (a newline in a text would otherwise print
as two result lines); ``--json`` is strict JSON (non-finite numbers are an error, never ``NaN``).
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from nanotrt.runtime.errors import NanotrtError

MAX_LINE_BYTES = 16 << 20  # one line of a text file; more is binary data or a file without newlines
CHUNK = 1 << 16
BYTES_PER_CHAR = 4  # UTF-8's longest; what keeps max_chars characters of any encoding used here


@dataclass
class Row:
    where: str  # "in.txt line 7", "TEXT argument 2"
    text: str
    pair: str | None


@dataclass
class Counts:
    skipped: int = 0  # blank lines
    rows: int = 0


def arg_rows(texts: list[str], pair: str | None) -> Iterator[Row]:
    """TEXT arguments (and --pair for exactly one) as rows, empty ones refused up front."""
    if not texts:
        raise NanotrtError("no input: give TEXT arguments, or -f FILE (one text per line, TAB before a pair; - for stdin)")
    if pair is not None and len(texts) != 1:
        raise NanotrtError("--pair goes with exactly one TEXT; for many pairs use -f with TAB-separated lines")
    for i, t in enumerate([*texts, *([pair] if pair is not None else [])]):
        if not t.strip():
            what = "--pair" if i == len(texts) else f"TEXT argument {i + 1}"
            raise NanotrtError(f"{what} is empty: there is nothing to classify")
    for i, t in enumerate(texts):
        yield Row(f"TEXT argument {i + 1}", t, pair)


def _ascii_compatible(encoding: str) -> bool:
    try:
        return "\n\t".encode(encoding) == b"\n\t" and codecs.lookup(encoding) is not None
    except LookupError:
        raise NanotrtError(f"unknown --encoding '{encoding}': use a Python codec name, e.g. utf-8, latin-1, cp1252") from None


class LineReader:
    """Bounded lines of a binary stream: (number, [text bytes, pair bytes or None], cut) per line."""

    def __init__(self, stream: IO[bytes], name: str, keep: int):
        self.stream, self.name, self.keep = stream, name, keep
        self.number = 0

    def __iter__(self) -> Iterator[tuple[int, list[bytearray], bool]]:
        while True:
            line = self._one()
            if line is None:
                return
            yield line

    def _one(self) -> tuple[int, list[bytearray], bool] | None:
        parts: list[bytearray] = [bytearray()]
        total, cut = 0, False
        while True:
            chunk = self.stream.readline(CHUNK)
            if not chunk:
                if total == 0:
                    return None
                break
            if total == 0:
                self.number += 1
            total += len(chunk)
            if total > MAX_LINE_BYTES:
                raise NanotrtError(f"{self.name} line {self.number} is longer than {MAX_LINE_BYTES >> 20} MiB: this is not "
                                   "a text file of one text per line; give one, or split the line")
            end = chunk.endswith(b"\n")
            body = chunk[:-1] if end else chunk
            if len(parts) == 1 and b"\t" in body:
                head, body = body.split(b"\t", 1)
                cut |= self._add(parts[0], head)
                parts.append(bytearray())
            cut |= self._add(parts[-1], body)
            if end:
                break
        return self.number, parts, cut

    def _add(self, part: bytearray, data: bytes) -> bool:
        room = self.keep - len(part)
        part += data[: max(room, 0)]
        return len(data) > room


def _decode(data: bytes | bytearray, encoding: str, where: str, cut: bool) -> str:
    """Strict decoding; a side that was cut may end inside a character, which is dropped, not an error."""
    dec = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        return dec.decode(bytes(data), final=not cut)
    except UnicodeDecodeError as e:
        raise NanotrtError(f"{where}: byte 0x{data[e.start]:02x} is not valid {encoding}: convert the file to UTF-8, "
                           "or pass --encoding with its encoding (e.g. latin-1, cp1252)") from e


def file_rows(stream: IO[bytes], name: str, encoding: str, max_chars: int, counts: Counts) -> Iterator[Row]:
    """Rows of a text file or stdin, streamed; see the module docstring."""
    if not _ascii_compatible(encoding):
        yield from _text_rows(stream, name, encoding, max_chars, counts)
        return
    paired: tuple[int, bool] | None = None  # (line, has a pair) of the first row
    for n, parts, cut in LineReader(stream, name, BYTES_PER_CHAR * max_chars + BYTES_PER_CHAR):
        where = f"{name} line {n}"
        sides = [_decode(p, encoding, where, cut) for p in parts]
        if n == 1 and sides[0].startswith("\ufeff"):  # a BOM (Windows editors) is not text
            sides[0] = sides[0][1:]
        sides[-1] = sides[-1].removesuffix("\r")
        row = _row(where, n, [s[:max_chars] for s in sides], counts)
        if row is None:
            continue
        if paired is None:
            paired = (n, row.pair is not None)
        elif paired[1] != (row.pair is not None):
            has = "has no TAB-separated pair" if paired[1] else "has a TAB-separated pair"
            raise NanotrtError(f"{where} {has} but line {paired[0]} {'has one' if paired[1] else 'has none'}: "
                               "give every line a pair, or none")
        yield row
    if counts.rows == 0:
        raise NanotrtError(f"{name} has no text: give one text per line (TAB before a pair)")


def _row(where: str, n: int, sides: list[str], counts: Counts) -> Row | None:
    if not "".join(sides).strip():  # blank, or only whitespace and TABs
        counts.skipped += 1
        return None
    if any(not s.strip() for s in sides):
        raise NanotrtError(f"{where}: empty text {'before' if not sides[0].strip() else 'after'} the TAB: "
                           "give both sentences of the pair, or remove the TAB")
    counts.rows += 1
    return Row(where, sides[0], sides[1] if len(sides) == 2 else None)


def _text_rows(stream: IO[bytes], name: str, encoding: str, max_chars: int, counts: Counts) -> Iterator[Row]:
    """UTF-16/32 files: decoded by Python's text layer (which decodes ahead, so a bad byte is reported at the
    line being read, at or before its own), with the same per-line bound."""
    import io

    text = io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline="\n")
    n = 0
    while True:
        try:
            line = text.readline(MAX_LINE_BYTES)
        except UnicodeDecodeError as e:
            raise NanotrtError(f"{name} line {n + 1} or after: not valid {encoding} ({e.reason}): convert the file "
                               "to UTF-8, or pass --encoding with its encoding") from e
        if not line:
            break
        n += 1
        if not line.endswith("\n") and len(line) >= MAX_LINE_BYTES:
            raise NanotrtError(f"{name} line {n} is longer than {MAX_LINE_BYTES >> 20} Mi characters: split it")
        line = line.removesuffix("\n").removesuffix("\r").removeprefix("\ufeff" if n == 1 else "")
        row = _row(f"{name} line {n}", n, [s[:max_chars] for s in line.split("\t", 1)], counts)
        if row is not None:
            yield row
    if counts.rows == 0:
        raise NanotrtError(f"{name} has no text: give one text per line (TAB before a pair)")


# --- printing -------------------------------------------------------------------------------------
_ESCAPES = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES.update({c: f"\\x{c:02x}" for c in [*range(32), 0x7F, *range(0x80, 0xA0)] if c not in _ESCAPES})
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})  # line separators of some terminals and readers


def escape(text: str) -> str:
    """One printable line: backslash, control characters and line separators written as escapes."""
    return text.translate(_ESCAPES)


def check_finite(row: Row, pred: Any) -> None:
    """Non-finite outputs mean broken graphs or inputs the model cannot represent, never a label."""
    if not all(math.isfinite(x) for x in [pred.score, *pred.probs, *pred.ramp_preds]):
        raise NanotrtError(f"{row.where}: the model gave non-finite outputs (NaN or infinity) for this input: its "
                           "graphs are damaged or do not belong together; re-export (and rebuild) the artifact")


def json_line(row: Row, pred: Any) -> str:
    return json.dumps({"text": row.text, **({"pair": row.pair} if row.pair is not None else {}), "label": pred.label,
                       "score": pred.score, "probs": pred.probs, "exit_layer": pred.exit_layer,
                       "ramp_preds": pred.ramp_preds}, allow_nan=False)


def plain_line(row: Row, pred: Any, labels: list[str], layers: int, regression: bool) -> str:
    text = escape(row.text)
    if regression:
        return f"{pred.score:.4f}\texit@{pred.exit_layer}\tramps={[round(x, 3) for x in pred.ramp_preds]}\t{text}"
    probs = " ".join(f"{escape(lab)}={q:.3f}" for lab, q in zip(labels, pred.probs, strict=True))
    ramps = ",".join(escape(labels[int(k)]) for k in pred.ramp_preds)
    return f"{escape(pred.label)}\t{probs}\texit@{pred.exit_layer}/{layers}\tramps=[{ramps}]\t{text}"
