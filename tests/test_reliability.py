"""Bad input everywhere it enters, table-driven, through the real CLI in separate processes.

Every case must exit with status 2, print exactly one ``error:`` line that names the problem (the
``needle``), and never a traceback. To keep ~80 processes fast, one driver process imports nanotrt
(and torch) once and forks a child per case; the child runs ``nanotrt.cli.main`` with the case's argv,
stdin and stdout/stderr redirected to files, exactly as the console script does. A few cases also run
as a plain ``python -m nanotrt`` subprocess, so the real entry point is covered too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FIX = Path(__file__).parent / "fixtures" / "glue"

# The driver: reads [[argv, stdin_path], ...] and prints [[rc, stdout, stderr], ...] as JSON.
DRIVER = r"""
import json, os, sys, time
import nanotrt.cli, nanotrt.pipeline.export, nanotrt.pipeline.train, nanotrt.pipeline.build  # noqa: F401
import onnxruntime  # noqa: F401
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
import transformers.models.bert.modeling_bert, transformers.models.roberta.modeling_roberta  # noqa: F401
cases, out_dir = json.load(open(sys.argv[1])), sys.argv[2]
CASE_TIMEOUT_S = int(sys.argv[3])
results = []
for k, (argv, stdin) in enumerate(cases):
    paths = [os.path.join(out_dir, f"{k}.{s}") for s in ("out", "err")]
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(CASE_TIMEOUT_S)  # a hang ends the case (status -14), never the suite
        fds = [os.open(stdin or os.devnull, os.O_RDONLY)] + [os.open(p, os.O_WRONLY | os.O_CREAT) for p in paths]
        for fd, target in zip(fds, (0, 1, 2)):
            os.dup2(fd, target)
        sys.argv = ["nanotrt", *argv]
        code = 1
        try:
            nanotrt.cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    results.append([rc, *(open(p, errors="replace").read() for p in paths), round(time.perf_counter() - t0, 2)])
print(json.dumps(results))
"""


@dataclass
class Case:
    id: str
    argv: Callable[[Path, dict[str, Path]], list[str]]  # (case dir, shared inputs) -> argv after `nanotrt`
    needle: str
    stdin: bytes | None = None
    xfail: str | None = None


def _relink(path: Path, data: bytes | str) -> None:
    """Replace a (possibly hard-linked) file with new content without touching the shared original."""
    path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _art(case: Path, s: dict[str, Path]) -> Path:
    """A private copy of the tiny artifact (hard links: cheap; edits go through _relink)."""
    art = case / "art"
    if not art.exists():
        shutil.copytree(s["art"], art, copy_function=os.link)
    return art


def _edit_manifest(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path, dict[str, Path]], list[str]]:
    def argv(case: Path, s: dict[str, Path]) -> list[str]:
        art = _art(case, s)
        man = json.loads((art / "manifest.json").read_text())
        edit(man)
        _relink(art / "manifest.json", json.dumps(man))
        return ["predict", str(art), "some text"]
    return argv


def _hostile(edit: Callable[[dict[str, Any], Path, dict[str, Path]], None], *extra: str
             ) -> Callable[[Path, dict[str, Path]], list[str]]:
    """A private artifact whose manifest ``edit(manifest, artifact, shared)`` changes (and may touch files)."""
    def argv(case: Path, s: dict[str, Path]) -> list[str]:
        art = _art(case, s)
        man = json.loads((art / "manifest.json").read_text())
        edit(man, art, s)
        _relink(art / "manifest.json", json.dumps(man))
        return ["predict", str(art), "some text", *extra]
    return argv


def _rehashed(man: dict[str, Any], art: Path, rel: str, data: bytes) -> None:
    """Replace file ``rel`` and record its new sha256 and size, as a consistent (not damaged) artifact would."""
    _relink(art / rel, data)
    entry = man["tokenizer"] if man["tokenizer"]["file"] == rel else next(
        e for e in man["graphs"].values() if e["file"] == rel)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _npy(array: Any) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _table(man: dict[str, Any], art: Path) -> Any:
    import numpy as np

    return np.load(art / man["graphs"]["word_embeddings"]["file"])


def _outside(art: Path, s: dict[str, Path]) -> str:
    return os.path.relpath(s["sentinel"], art)  # ../../sentinel.fifo


def _symlink(rel: str, target: Callable[[Path, dict[str, Path]], str]) -> Callable[..., None]:
    def edit(man: dict[str, Any], art: Path, s: dict[str, Path]) -> None:
        (art / rel).unlink()
        (art / rel).symlink_to(target(art, s))
    return edit


def _mkfifo(rel: str) -> Callable[..., None]:
    def edit(man: dict[str, Any], art: Path, s: dict[str, Path]) -> None:
        (art / rel).unlink()
        os.mkfifo(art / rel)
    return edit


def _put(path: str, value: Callable[[dict[str, Any], Path, dict[str, Path]], Any]) -> Callable[..., None]:
    def edit(man: dict[str, Any], art: Path, s: dict[str, Path]) -> None:
        _set(path, value(man, art, s))(man)
    return edit


def _damaged(root_fn: Callable[[Path, dict[str, Path]], Path], rel: str,
             data: bytes | None) -> Callable[[Path, dict[str, Path]], Path]:
    """A private copy (from ``root_fn``) with file ``rel`` replaced by ``data`` (None: deleted)."""
    def root(case: Path, s: dict[str, Path]) -> Path:
        d = root_fn(case, s)
        if data is None:
            (d / rel).unlink()
        else:
            _relink(d / rel, data)
        return d
    return root


def _predict_damaged(rel: str, data: bytes | None) -> Callable[[Path, dict[str, Path]], list[str]]:
    return lambda case, s: ["predict", str(_damaged(_art, rel, data)(case, s)), "some text"]


def _model(case: Path, s: dict[str, Path]) -> Path:
    d = case / "model"
    if not d.exists():
        shutil.copytree(s["model"], d, copy_function=os.link)
    return d


def _ckpt(case: Path, s: dict[str, Path]) -> Path:
    d = case / "ckpt"
    if not d.exists():
        shutil.copytree(s["art"] / "checkpoint", d, copy_function=os.link)
    return d


def _predict(*extra: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    return lambda case, s: ["predict", str(s["art"]), *extra]


def _predict_file(content: bytes, *extra: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    def argv(case: Path, s: dict[str, Path]) -> list[str]:
        (case / "in.txt").write_bytes(content)
        return ["predict", str(s["art"]), "-f", str(case / "in.txt"), *extra]
    return argv


def _glue(task_dir: str, name: str, content: bytes, *cmd: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    """A GLUE dir whose ``task_dir/name`` is ``content`` (the rest copied from the fixtures)."""
    def argv(case: Path, s: dict[str, Path]) -> list[str]:
        shutil.copytree(FIX, case / "glue")
        (case / "glue" / task_dir).mkdir(exist_ok=True)
        (case / "glue" / task_dir / name).write_bytes(content)
        return [*cmd, "--data-dir", str(case / "glue"), "--model", str(s["model"]), "-o", str(case / "out")]
    return argv


def _export(root_fn: Callable[[Path, dict[str, Path]], Path], *extra: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    return lambda case, s: ["export", str(root_fn(case, s)), "-o", str(case / "out"), *extra]


def _rm_tree_files(names: tuple[str, ...]) -> Callable[[Path, dict[str, Path]], Path]:
    def root(case: Path, s: dict[str, Path]) -> Path:
        d = _model(case, s)
        for n in names:
            (d / n).unlink(missing_ok=True)
        return d
    return root


def _foreign_tokenizer(case: Path, s: dict[str, Path]) -> Path:
    """The BERT model dir with RoBERTa's tokenizer (50265 tokens for a 30522-row embedding table)."""
    d = _model(case, s)
    for f in d.glob("tokenizer*"):
        f.unlink()
    for f in (s["roberta_art"] / "tokenizer").iterdir():
        shutil.copy(f, d / f.name)
    return d


def _art_foreign_tokenizer(man: dict[str, Any], art: Path, s: dict[str, Path]) -> None:
    _rehashed(man, art, "tokenizer/tokenizer.json", (s["roberta_art"] / "tokenizer" / "tokenizer.json").read_bytes())


def _missing(case: Path, s: dict[str, Path]) -> Path:
    return case / "nope"


def _empty_dir(case: Path, s: dict[str, Path]) -> Path:
    (case / "empty").mkdir(exist_ok=True)
    return case / "empty"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(man: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = man
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value
    return edit


_DELETE = object()
STSB_HEADER = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
COLA_OK = b"gj04\t1\t\tA fine sentence.\n" * 4

CASES = [
    # --- predict: the artifact -----------------------------------------------------------------
    Case("artifact-missing", lambda c, s: ["predict", str(c / "nope"), "x"], "does not exist"),
    Case("artifact-not-artifact", lambda c, s: ["predict", str(_empty_dir(c, s)), "x"], "no manifest.json"),
    Case("manifest-not-json", _predict_damaged("manifest.json", b"{not json"),
         "not valid JSON"),
    Case("manifest-not-utf8", _predict_damaged("manifest.json", b"\xff\xfe{}"),
         "not valid JSON"),
    Case("manifest-a-list", _predict_damaged("manifest.json", b"[1, 2]"),
         "not a nanotrt manifest"),
    Case("manifest-future-version", _edit_manifest(_set("format_version", 99)), "format version 99"),
    Case("manifest-no-graphs", _edit_manifest(_set("graphs", _DELETE)), "graphs is missing"),
    Case("manifest-no-variants", _edit_manifest(_set("variants", _DELETE)), "variants is missing"),
    Case("manifest-empty-variants", _edit_manifest(_set("variants", {})), "variants is empty"),
    Case("manifest-layers-as-text", _edit_manifest(_set("num_layers", "three")), "num_layers should be int"),
    Case("manifest-layers-zero", _edit_manifest(_set("num_layers", 0)), "must be >= 1"),
    Case("manifest-layers-bool", _edit_manifest(_set("num_layers", True)), "num_layers should be int"),
    Case("manifest-labels-empty", _edit_manifest(_set("labels", [])), "labels should be"),
    Case("manifest-labels-numbers", _edit_manifest(_set("labels", [0, 1])), "labels should be"),
    Case("manifest-task-type", _edit_manifest(_set("task_type", "ranking")), "task_type 'ranking'"),
    Case("manifest-no-tokenizer-length", _edit_manifest(_set("tokenizer.max_length", _DELETE)),
         "tokenizer.max_length is missing"),
    Case("manifest-tokenizer-length-text", _edit_manifest(_set("tokenizer.max_length", "128")),
         "tokenizer.max_length should be int"),
    Case("manifest-graph-bytes-text", _edit_manifest(_set("graphs.layer_01.bytes", "lots")),
         "graphs.layer_01.bytes should be int"),
    Case("manifest-graph-no-sha", _edit_manifest(_set("graphs.ramp_00.sha256", _DELETE)),
         "graphs.ramp_00.sha256 is missing"),
    Case("manifest-graph-not-object", _edit_manifest(_set("graphs.ramp_00", "ramp_00.onnx")),
         "graphs.ramp_00 should be an object"),
    Case("manifest-variant-unknown-graph", _edit_manifest(_set("variants.fp32.embeddings", "embedz")),
         'names graph "embedz"'),
    Case("manifest-variant-short", _edit_manifest(_set("variants.fp32.layers", ["layer_00"])),
         "lists 1 graphs, num_layers is 3"),
    Case("manifest-variant-no-ramps", _edit_manifest(_set("variants.fp32.ramps", _DELETE)),
         "variants.fp32.ramps is missing"),
    Case("manifest-lookup-unknown", _edit_manifest(_set("lookup", "wordz")), 'lookup names graph "wordz"'),
    Case("variant-unknown", _predict("x", "--variant", "nope"), "has no 'nope' variant"),
    Case("precision-not-built", _predict("x", "--precision", "int8"), "has no int8 variant"),
    Case("graph-file-deleted", _predict_damaged("graphs/layer_01.onnx", None),
         "layer_01.onnx listed in the manifest is missing"),
    Case("graph-file-truncated", _predict_damaged("graphs/layer_01.onnx", b"\x08\x07"),
         "layer_01.onnx does not match its sha256"),
    Case("word-table-deleted", _predict_damaged("graphs/word_embeddings.npy", None), "word_embeddings.npy"),
    Case("tokenizer-deleted", _predict_damaged("tokenizer/tokenizer.json", None),
         "tokenizer file"),
    Case("tokenizer-garbage", _hostile(lambda m, a, s: _rehashed(m, a, "tokenizer/tokenizer.json", b'{"model": 3}')),
         "cannot read tokenizer file"),
    Case("tokenizer-other-model", _hostile(_art_foreign_tokenizer), "not this model's tokenizer"),
    Case("tokenizer-swapped", _predict_damaged("tokenizer/tokenizer.json", b'{"model": 3}'),
         "tokenizer.json does not match its sha256"),
    Case("tokenizer-unhashed", _edit_manifest(_set("tokenizer.sha256", _DELETE)), "tokenizer.sha256 is missing"),
    # --- predict: an artifact that tries to read outside itself (the sentinel FIFO must never be opened) ------
    Case("contain-graph-absolute", _hostile(_put("graphs.layer_01.file", lambda m, a, s: str(s["sentinel"]))),
         "is not a relative path inside the artifact"),
    Case("contain-graph-dotdot", _hostile(_put("graphs.layer_01.file", lambda m, a, s: _outside(a, s))),
         "is not a relative path inside the artifact"),
    Case("contain-graph-symlink-out", _hostile(_symlink("graphs/layer_01.onnx", lambda a, s: str(s["sentinel"]))),
         "leads outside the artifact"),
    Case("contain-graph-fifo-inside", _hostile(_mkfifo("graphs/layer_01.onnx")), "is not a regular file"),
    Case("contain-tokenizer-dotdot", _hostile(_put("tokenizer.file", lambda m, a, s: _outside(a, s))),
         "is not a relative path inside the artifact"),
    Case("contain-tokenizer-dev-zero", _hostile(_symlink("tokenizer/tokenizer.json", lambda a, s: "/dev/zero")),
         "leads outside the artifact"),
    Case("contain-data-absolute", _hostile(_put("graphs.layer_01.data", lambda m, a, s: {
        "file": str(s["sentinel"]), "sha256": "0" * 64, "bytes": 0})), "is not a relative path inside the artifact"),
    Case("contain-profile-dotdot", _hostile(_put("profiles", lambda m, a, s: {"fp32": {
        "file": _outside(a, s), "sha256": "0" * 64, "bytes": 1}})), "is not a relative path inside the artifact"),
    Case("contain-checkpoint-absolute", _edit_manifest(_set("checkpoint", "/etc")), "is not a relative path"),
    Case("manifest-bytes-negative", _edit_manifest(_set("graphs.layer_01.bytes", -1)), "must be a whole number >= 0"),
    Case("manifest-sha-not-hex", _edit_manifest(_set("graphs.ramp_00.sha256", "abc")), "is not a sha256"),
    Case("manifest-nan", _hostile(lambda m, a, s: m.update(hidden_size=float("nan"))), "not valid JSON"),
    # --- predict: artifacts that are well-formed but wrong ----------------------------------------------
    Case("wrong-layer-is-a-ramp", _edit_manifest(_set("variants.fp32.layers", ["ramp_00", "layer_01", "layer_02"])),
         "graphs swapped"),
    Case("wrong-ramps-reversed", _edit_manifest(_set("variants.fp32.ramps", ["ramp_02", "ramp_01", "ramp_00"])),
         "graphs swapped"),
    Case("wrong-layers-reversed", _edit_manifest(_set("variants.fp32.layers", ["layer_02", "layer_01", "layer_00"])),
         "graphs swapped"),
    Case("wrong-labels-vs-ramp-width", _edit_manifest(_set("labels", ["a", "b", "c"])),
         "gives 2 logits but the manifest has 3 label(s)"),
    Case("wrong-regression-on-classifier", _edit_manifest(_set("task_type", "regression")),
         "regression but there are 2 labels"),
    Case("wrong-word-table-shape", _hostile(_put("graphs.word_embeddings.shape",
                                                 lambda m, a, s: [2 * m["hidden_size"], m["graphs"]["word_embeddings"]["shape"][0] // 2])),
         "-wide embeddings but the word table is"),
    Case("wrong-word-table-header", _hostile(lambda m, a, s: _rehashed(m, a, "graphs/word_embeddings.npy", _npy(
        _table(m, a).reshape(-1, m["hidden_size"] // 2)))), "the manifest says float32"),
    Case("wrong-word-table-pickle", _hostile(lambda m, a, s: _rehashed(m, a, "graphs/word_embeddings.npy", _npy(
        __import__("numpy").array([{"x": 1}] * 9, dtype=object)))), "does not fit a float32 table"),
    Case("wrong-max-length-past-positions", _hostile(_put("tokenizer.max_length",
                                                          lambda m, a, s: m["tokenizer"]["max_positions"] + 1)),
         "would index past the position table"),
    Case("wrong-default-exit-type", _edit_manifest(_set("default_exit", 3)), "default_exit should be a string"),
    Case("wrong-profile-type", _hostile(lambda m, a, s: (
        (a / "profile-fp32.json").write_text("[1, 2]"),
        m.update(profiles={"fp32": {"file": "profile-fp32.json", "sha256": hashlib.sha256(b"[1, 2]").hexdigest(),
                                    "bytes": 6}}))), "is not a nanotrt device profile"),
    Case("wrong-outputs-nan", _hostile(lambda m, a, s: _rehashed(m, a, "graphs/word_embeddings.npy", _npy(
        _table(m, a) * float("nan")))), "non-finite outputs"),
    # --- predict: the inputs -------------------------------------------------------------------
    Case("no-input", _predict(), "no input"),
    Case("empty-text", _predict(""), "TEXT argument 1 is empty"),
    Case("whitespace-text", _predict("fine", " \t "), "TEXT argument 2 is empty"),
    Case("empty-pair", _predict("fine", "--pair", ""), "--pair is empty"),
    Case("pair-with-two-texts", _predict("a", "b", "--pair", "c"), "--pair goes with exactly one TEXT"),
    Case("text-and-file", _predict("a", "-f", "x.txt"), "not both"),
    Case("file-missing", _predict("-f", "/nonexistent/in.txt"), "does not exist"),
    Case("file-is-dir", _predict("-f", "/"), "cannot read input file"),
    Case("file-not-utf8", _predict_file(b"fine\nalso fine\ncaf\xe9 au lait\n"), "line 3: byte 0xe9 is not valid utf-8"),
    Case("file-utf16-as-utf8", _predict_file("hello\n".encode("utf-16")), "line 1: byte 0xff"),
    Case("file-bad-encoding-name", _predict_file(b"ok\n", "--encoding", "klingon"), "unknown --encoding 'klingon'"),
    Case("file-only-blank-lines", _predict_file(b"\n   \n\t\n"), "has no text"),
    Case("file-empty", _predict_file(b""), "has no text"),
    Case("file-mixed-pairs", _predict_file(b"a\tb\nc\n"), "line 2 has no TAB-separated pair but line 1 has one"),
    Case("file-empty-first-sentence", _predict_file(b"a\tb\n\tc\n"), "line 2: empty text before the TAB"),
    Case("file-empty-second-sentence", _predict_file(b"a\tb\nc\t \n"), "line 2: empty text after the TAB"),
    Case("stdin-not-utf8", _predict("-f", "-"), "stdin line 2: byte 0xff", stdin=b"ok\n\xff\n"),
    Case("stdin-empty", _predict("-f", "-"), "stdin has no text", stdin=b""),
    Case("file-dev-zero", _predict("-f", "/dev/zero"), "line 1 is longer than 16 MiB"),
    Case("file-binary-late", _predict_file(b"fine\n" * 3 + b"\x00\xff\xfe" * 10), "line 4: byte 0xff"),
    Case("file-utf16-declared", _predict_file("ok\n\tx\n".encode("utf-16"), "--encoding", "utf-16"),
         "line 2: empty text before the TAB"),
    Case("threads-huge", _predict("x", "--threads", "5000"), "--threads 5000 is out of range"),
    Case("threads-zero", _predict("x", "--threads", "0"), "--threads 0 is out of range"),
    Case("max-chars-zero", _predict("x", "--max-chars", "0"), "--max-chars 0 keeps nothing"),
    # --- predict: settings ---------------------------------------------------------------------
    Case("budget-unreadable", _predict("x", "--memory-budget", "lots"), "cannot read memory size"),
    Case("budget-negative", _predict("x", "--memory-budget", "-5MB"), "cannot read memory size"),
    Case("budget-too-small", _predict("x", "--memory-budget", "10KB"), "use at least"),
    Case("budget-zero-layers", _predict("x", "--memory-budget", "0layers"), "use at least"),
    Case("batch-size-zero", _predict("x", "--batch-size", "0"), "batch size must be >= 1"),
    Case("batch-size-text", _predict("x", "--batch-size", "abc"), "Invalid value for '--batch-size'"),
    Case("unknown-option", _predict("x", "--bogus"), "No such option: --bogus"),
    Case("unknown-command", lambda c, s: ["bogus"], "No such command 'bogus'"),
    Case("missing-argument", lambda c, s: ["predict"], "Missing argument"),
    Case("backend-unknown", _predict("x", "--backend", "tpu"), "unknown backend 'tpu'"),
    Case("backend-tensorrt-absent", _predict("x", "--backend", "tensorrt"), "TensorRT is not installed"),
    Case("exit-unknown", _predict("x", "--exit", "vibes=3"), "cannot read exit policy"),
    Case("exit-not-a-number", _predict("x", "--exit", "entropy=abc"), "bad number"),
    Case("exit-bad-extra", _predict("x", "--exit", "entropy=0.3,delta=1"), "cannot read exit policy"),
    Case("exit-patience-zero", _predict("x", "--exit", "patience=0"), "patience"),
    Case("exit-entropy-negative", _predict("x", "--exit", "entropy=-1"), "entropy"),
    Case("exit-maxprob-above-one", _predict("x", "--exit", "maxprob=1.5"), "maxprob"),
    Case("exit-depth-negative", _predict("x", "--exit", "depth=-1"), "depth"),
    # --- export: model directories --------------------------------------------------------------
    Case("model-missing", _export(_missing), "does not exist"),
    Case("model-no-config", _export(_empty_dir), "no config.json"),
    Case("model-config-not-json", _export(_damaged(_model, "config.json", b"{oops")), "config.json is not valid JSON"),
    Case("model-unsupported-family", _export(_damaged(_model, "config.json", b'{"model_type": "gpt2"}')),
         "unsupported model_type"),
    Case("model-no-weights", _export(_rm_tree_files(("model.safetensors",))), "cannot load the weights"),
    Case("model-truncated-weights", _export(_damaged(_model, "model.safetensors", b"\x10\0\0\0\0\0\0\0{")),
         "cannot load the weights"),
    Case("model-no-tokenizer", _export(_rm_tree_files(("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                       "special_tokens_map.json"))), "has only 5 tokens"),
    Case("model-foreign-tokenizer", _export(_foreign_tokenizer), "has 50265 tokens but the model's vocab_size is 30522"),
    Case("export-max-length-too-long", _export(_model, "--max-length", "100000"), "max_length 100000 is out of range"),
    Case("export-max-length-zero", _export(_model, "--max-length", "0"), "max_length 0 is out of range"),
    Case("export-pooling-unknown", _export(_model, "--pooling", "max"), "unknown ramp pooling 'max'"),
    Case("export-zero-labels", _export(_model, "--num-labels", "0"), "num_labels 0 is out of range"),
    Case("export-over-a-users-folder", lambda c, s: (_user_folder(c), ["export", str(s["model"]), "-o", str(c / "mine")])[1],
         "pass --force to replace it"),
    Case("export-over-the-current-folder", lambda c, s: ["export", str(s["model"]), "-o", "."],
         "would replace the current folder"),
    Case("export-over-a-file", lambda c, s: ((c / "f").write_text("x"), ["export", str(s["model"]), "-o", str(c / "f")])[1],
         "exists and is not a folder"),
    Case("train-over-a-users-folder", lambda c, s: (_user_folder(c), ["train", "--task", "cola", "--model",
                                                                           str(s["model"]), "-o", str(c / "mine")])[1],
         "pass --force to replace it"),
    Case("export-over-its-model", lambda c, s: ["export", str(_model(c, s)), "-o", str(c)], "which is inside it"),
    Case("checkpoint-ramp-config-damaged", _export(_damaged(_ckpt, "nanotrt.json", b'{"pooling": "cls", "speed": 9}')),
         "not a valid nanotrt ramp config"),
    Case("checkpoint-weights-deleted", _export(_damaged(_ckpt, "model.safetensors", None)), "has no model.safetensors"),
    Case("checkpoint-weights-truncated", _export(_damaged(_ckpt, "model.safetensors", b"\x10\0\0")),
         "model.safetensors"),
    # --- train: GLUE data -----------------------------------------------------------------------
    Case("train-unknown-task", lambda c, s: ["train", "--task", "imagenet", "--model", str(s["model"]), "-o", str(c / "o")],
         "unknown task 'imagenet'"),
    Case("train-task-not-downloaded", lambda c, s: ["train", "--task", "qnli", "--model", str(s["model"]), "-o",
                                                    str(c / "o"), "--data-dir", str(FIX)], "GLUE qnli train split not found"),
    Case("train-unknown-method", _glue("CoLA", "train.tsv", COLA_OK, "train", "--task", "cola", "--method", "magic"),
         "unknown method 'magic'"),
    Case("train-zero-epochs", _glue("CoLA", "train.tsv", COLA_OK, "train", "--task", "cola", "--epochs", "0"),
         "must be positive"),
    Case("train-limit-zero", _glue("CoLA", "train.tsv", COLA_OK, "train", "--task", "cola", "--limit", "0"),
         "asked for 0 cola examples"),
    Case("train-max-length-too-long", _glue("CoLA", "train.tsv", COLA_OK, "train", "--task", "cola", "--max-length",
                                            "4096"), "max_length 4096 is out of range"),
    Case("glue-cola-wrong-columns", _glue("CoLA", "train.tsv", b"A sentence.\t1\nAnother.\t0\n", "train", "--task", "cola"),
         "has no usable GLUE cola rows (2 malformed)"),
    Case("glue-cola-bad-labels", _glue("CoLA", "train.tsv", b"gj04\tyes\t\tA sentence.\n", "train", "--task", "cola"),
         "has no usable GLUE cola rows"),
    Case("glue-sst2-wrong-header", _glue("SST-2", "train.tsv", b"text\tlabel\nfine\t1\n", "train", "--task", "sst2"),
         "does not have the GLUE sst2 header"),
    Case("glue-stsb-scores-not-numbers", _glue("STS-B", "train.tsv", STSB_HEADER + b"0\tg\tf\t2012\t0\tn\tn\tA.\tB.\thigh\n",
                                               "train", "--task", "stsb"), "has no usable GLUE stsb rows (1 malformed)"),
    Case("glue-not-utf8", _glue("CoLA", "train.tsv", b"gj04\t1\t\tcaf\xe9\n", "train", "--task", "cola"), "is not UTF-8"),
    Case("glue-empty-file", _glue("CoLA", "train.tsv", b"", "train", "--task", "cola"), "has no usable GLUE cola rows"),
    # --- build ----------------------------------------------------------------------------------
    Case("build-missing-artifact", lambda c, s: ["build", str(c / "nope")], "does not exist"),
    Case("build-unknown-backend", lambda c, s: ["build", str(s["art"]), "--backend", "tvm"], "unknown build backend"),
    Case("build-int8-no-task", lambda c, s: ["build", str(s["art"]), "--int8"], "--int8 needs calibration data"),
    Case("build-int8-task-missing", lambda c, s: ["build", str(s["art"]), "--int8", "--calib-task", "qnli", "--data-dir",
                                                  str(FIX)], "GLUE qnli train split not found"),
    Case("build-calib-size-zero", lambda c, s: ["build", str(_art(c, s)), "--int8", "--calib-task", "cola", "--calib-size",
                                                "0", "--data-dir", str(FIX)], "asked for 0 cola examples"),
    Case("build-tensorrt-absent", lambda c, s: ["build", str(s["art"]), "--backend", "tensorrt"], "TensorRT is not installed"),
    Case("build-trt-shape-unreadable", lambda c, s: ["build", str(s["art"]), "--backend", "tensorrt", "--min-shape", "big"],
         "cannot read shape 'big'"),
    # --- bench ----------------------------------------------------------------------------------
    Case("bench-unknown-task", lambda c, s: ["bench", "--task", "imagenet"], "unknown task 'imagenet'"),
    Case("bench-labels-mismatch", lambda c, s: ["bench", "--task", "mnli", str(s["art"]), "--data-dir", str(FIX)],
         "has 2 labels but mnli has 3"),
]


def _user_folder(case: Path) -> Path:
    (case / "mine").mkdir(exist_ok=True)
    (case / "mine" / "thesis.tex").write_text("years of work")
    return case / "mine"


class Sentinel:
    """A FIFO outside every artifact that hostile manifests point at. A watcher thread opens it for writing,
    which returns only when someone opens it for reading: then the runtime read a file outside the artifact."""

    def __init__(self, path: Path):
        self.path, self.opened, self._stop = path, [], False
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            with open(self.path, "wb"):
                if self._stop:
                    return
                self.opened.append(time.time())

    def close(self) -> list[float]:
        self._stop = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # lets the watcher's open return
        self._thread.join(5)
        os.close(fd)
        return self.opened


CASE_TIMEOUT_S = 120  # per case (a driver child that hangs is killed by SIGALRM: exit status -14)


@pytest.fixture(scope="module")
def outcomes(artifacts: dict[str, Path], tiny_dirs: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    root = tmp_path_factory.mktemp("bad-inputs")
    sentinel = Sentinel(root / "sentinel.fifo")
    shared = {"art": artifacts["bert"], "roberta_art": artifacts["roberta"], "model": tiny_dirs["bert"],
              "sentinel": sentinel.path}
    specs = []
    for case in CASES:
        d = root / case.id
        d.mkdir()
        stdin = None
        if case.stdin is not None:
            (d / "stdin").write_bytes(case.stdin)
            stdin = str(d / "stdin")
        specs.append([case.argv(d, shared), stdin])
    (root / "cases.json").write_text(json.dumps(specs))
    (root / "driver.py").write_text(DRIVER)
    (root / "out").mkdir()
    p = subprocess.run([sys.executable, str(root / "driver.py"), str(root / "cases.json"), str(root / "out"),
                        str(CASE_TIMEOUT_S)], capture_output=True, text=True, timeout=1800, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sentinel.close() == [], "a case opened a file outside its artifact (the sentinel FIFO)"
    assert (root / "export-over-a-users-folder" / "mine" / "thesis.tex").read_text() == "years of work"
    results = json.loads(p.stdout.strip().splitlines()[-1])
    if os.environ.get("NANOTRT_CASE_TIMES"):
        print(sorted(((r[3], c.id) for c, r in zip(CASES, results, strict=True)), reverse=True)[:15])
    return {case.id: tuple(r[:3]) for case, r in zip(CASES, results, strict=True)}  # type: ignore[misc]


def _assert_one_clean_line(rc: int, err: str, needle: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert err.rstrip().splitlines()[-1] == lines[0], err  # the error is the last thing printed


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input_gives_one_clean_line(case: Case, outcomes: dict[str, tuple[int, str, str]]) -> None:
    rc, _out, err = outcomes[case.id]
    _assert_one_clean_line(rc, err, case.needle)


@pytest.mark.parametrize("argv,needle", [
    (["predict", "/nonexistent-artifact", "x"], "does not exist"),
    (["predict", "/nonexistent-artifact", "x", "--batch-size", "x"], "Invalid value for '--batch-size'"),
    (["export", "/nonexistent-model", "-o", "/tmp/nanotrt-never-written"], "does not exist"),
])
def test_real_entry_point(argv: list[str], needle: str) -> None:
    p = subprocess.run([sys.executable, "-m", "nanotrt", *argv], capture_output=True, text=True, timeout=300)
    _assert_one_clean_line(p.returncode, p.stderr, needle)
    assert not Path("/tmp/nanotrt-never-written").exists()


# --- what good-but-unusual input does ----------------------------------------------------------

def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "nanotrt", *args], capture_output=True, input=stdin, timeout=300)


def test_blank_lines_skipped_and_counted_bom_and_crlf(artifacts: dict[str, Path], tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(b"\xef\xbb\xbffirst line\r\n\r\n   \r\nsecond line\r\n")
    p = _cli("predict", str(artifacts["bert"]), "-f", str(f), "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["first line", "second line"]  # no BOM, no \r
    assert p.stderr.decode().strip() == f"note: skipped 2 empty line(s) in {f}"


def test_encoding_option_reads_latin1_and_stdin(artifacts: dict[str, Path]) -> None:
    p = _cli("predict", str(artifacts["bert"]), "-f", "-", "--encoding", "latin-1", "--json", stdin=b"caf\xe9 au lait\n")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.decode())["text"] == "café au lait"


def test_overlong_inputs_truncated_with_one_warning(artifacts: dict[str, Path], tmp_path: Path) -> None:
    long = " ".join(["word"] * 400)
    f = tmp_path / "in.txt"
    f.write_text(f"short\n{long}\n{long} again\nalso short\n")
    p = _cli("predict", str(artifacts["bert"]), "-f", str(f), "--batch-size", "1")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.decode().splitlines()) == 4
    assert p.stderr.decode().strip() == "warning: 2 of 4 input(s) longer than 128 tokens were truncated"
    ok = _cli("predict", str(artifacts["bert"]), "short text")
    assert ok.returncode == 0 and ok.stderr == b""  # no warning when nothing was cut


def test_library_refuses_empty_text(artifacts: dict[str, Path]) -> None:
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(artifacts["bert"]) as r:
        with pytest.raises(NanotrtError, match=re.escape("texts[1] is empty")):
            r.predict(["fine", "  "], batch_size=2)
        with pytest.raises(NanotrtError, match=re.escape("pairs[0] is empty")):
            r.predict(["fine"], [""])
        with pytest.raises(NanotrtError, match="not a string"):
            r.predict(["fine", None])  # type: ignore[list-item]
        r.predict(["still works"])
        assert r.tokenizer.truncated == 0
        r.predict(["x " * 300])
        assert r.tokenizer.truncated == 1


def test_glue_reader_skips_empty_sentences(tmp_path: Path) -> None:
    from nanotrt.pipeline.glue import read_split

    shutil.copytree(FIX, tmp_path / "glue")
    (tmp_path / "glue" / "CoLA" / "dev.tsv").write_text("a\t1\t\tGood one.\nb\t0\t\t   \nc\t1\t\tAlso good.\n")
    s = read_split("cola", "dev", tmp_path / "glue")
    assert s.texts == ["Good one.", "Also good."] and s.skipped == 1


def test_every_table_case_really_fails_before_any_output(outcomes: dict[str, tuple[int, str, str]]) -> None:
    """No bad-input case printed a prediction it should not have: none at all, except that `-f` / stdin stream
    and print the lines before the bad one (fewer results than the bad line's number)."""
    printed = {}
    for k, (_, out, err) in outcomes.items():
        results = [x for x in out.splitlines() if "exit@" in x]
        bad_line = re.search(r" line (\d+)", err)
        streamed = k.startswith(("file-", "stdin-")) and bad_line is not None
        if results and not (streamed and len(results) < int(bad_line.group(1))):  # type: ignore[union-attr]
            printed[k] = out
    xfails = {c.id for c in CASES if c.xfail}
    assert set(printed) <= xfails, printed


# --- streaming, output integrity, library arguments, writers (issue 22) -------------------------

TINY = Path(__file__).parent / "fixtures" / "tiny-artifact"


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; a hang fails the test instead of the suite."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_stream_prints_the_lines_before_a_bad_one(tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(b"".join(b"line %d\n" % i for i in range(1, 41)) + b"caf\xe9\n" + b"never read\n")
    p = _cli("predict", str(TINY), "-f", str(f), "--json")
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    rows = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == [f"line {i}" for i in range(1, 41)]  # every line before it, in order
    assert p.stderr.decode().strip().splitlines()[-1].startswith(f"error: {f} line 41: byte 0xe9")


def test_control_characters_cannot_forge_output_lines() -> None:
    from nanotrt.predict_io import escape

    texts = ["two\nlines", "esc \x1b[31mred", "cr\rover", "tab\there", "sep\u2028ara\u2029tor", "back\\slash"]
    p = _cli("predict", str(TINY), *texts)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().split("\n")[:-1]
    assert len(lines) == len(texts)
    assert [x.split("\t")[-1] for x in lines] == [escape(t) for t in texts] and "\\n" in lines[0]
    assert not any(ch in p.stdout.decode() for ch in "\x1b\r\u2028\u2029")
    j = _cli("predict", str(TINY), "--json", *texts)
    assert [json.loads(x)["text"] for x in j.stdout.decode().splitlines()] == texts  # strict JSON, one per line


def test_json_output_is_strict_and_non_finite_is_an_error() -> None:
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.runner import Prediction

    from nanotrt.predict_io import Row, check_finite, json_line

    bad = Prediction("x", 0, float("nan"), [float("nan"), 0.5], 2, [0, 1])
    with pytest.raises(NanotrtError, match="line 3: the model gave non-finite outputs"):
        check_finite(Row("in.txt line 3", "t", None), bad)
    with pytest.raises(ValueError):
        json_line(Row("w", "t", None), bad)  # never prints NaN


def test_huge_lines_cost_no_more_memory_than_short_ones(tmp_path: Path) -> None:
    """Peak RSS of `predict` on one huge line (and pair) stays within a few MB of a short line's: the input is
    bounded before tokenization and pair truncation is linear (before: ~1 GB for a 33 KB pair line)."""
    code = ("import sys; from nanotrt.cli import main; from nanotrt.runtime.profile import proc_status_bytes\n"
            "sys.argv = ['nanotrt', 'predict', sys.argv[1], '-f', sys.argv[2], '--memory-budget', '1layer']\n"
            "try: main()\nexcept SystemExit as e: rc = e.code\n"  # VmHWM: ru_maxrss survives exec (pytest's)
            "print(rc, proc_status_bytes('VmHWM') // 1024, file=sys.stderr)")
    peaks = {}
    for name, line in [("short", b"a short line\n"), ("5MB", b"word " * 1_000_000 + b"\n"),
                       ("pair", b"word " * 200_000 + b"\t" + b"other " * 200_000 + b"\n")]:
        f = tmp_path / f"{name}.txt"
        f.write_bytes(line)
        p = subprocess.run([sys.executable, "-c", code, str(TINY), str(f)], capture_output=True, text=True, timeout=300)
        rc, kb = p.stderr.strip().splitlines()[-1].split()
        assert rc == "0", p.stderr
        peaks[name] = int(kb) / 1024
    assert max(peaks.values()) - peaks["short"] < 40, peaks  # MB: the kept prefix, not the line


def test_library_argument_types() -> None:
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.runner import Runner

    bad: list[tuple[dict[str, Any], str]] = [
        ({"texts": ["a", "b"], "pairs": "ab"}, "pairs is one string for 2 texts"),
        ({"texts": 5}, "texts should be a string or a list of strings, not int"),
        ({"texts": b"bytes"}, "texts should be a string or a list of strings, not bytes"),
        ({"texts": {"a": 1}}, "not dict"),
        ({"texts": ["a"], "pairs": ["b", "c"]}, "got 1 texts but 2 pairs"),
        ({"texts": ["a", 3]}, "texts[1] is a int, not a string"),
        ({"texts": ["a"], "batch_size": True}, "batch size must be >= 1"),
        ({"texts": ["a"], "batch_size": 2.5}, "batch size must be >= 1"),
        ({"texts": ["a"], "block_size": 0}, "block size must be >= 1"),
    ]
    with Runner.from_artifact(TINY) as r:
        for kwargs, needle in bad:
            with pytest.raises(NanotrtError, match=re.escape(needle)):
                _within(60, lambda kwargs=kwargs: r.predict(**kwargs))
        one = _within(60, lambda: r.predict("a text", "its pair"))  # one string is one text, and its pair
        assert len(one.predictions) == 1
        big = " ".join(["word"] * 100_000)
        res = _within(120, lambda: r.predict([big, big], [big, big], batch_size=2))  # was OOM-killed at 22 GB
        assert len(res.predictions) == 2 and r.tokenizer.truncated >= 2


def test_export_never_replaces_a_users_folder(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    p = _cli("export", str(tiny_dirs["bert"]), "-o", str(mine))
    assert p.returncode == 2 and b"--force" in p.stderr and (mine / "notes.txt").read_text() == "keep me"
    old = os.umask(0o022)
    try:
        from nanotrt.pipeline.export import export_model

        export_model(tiny_dirs["bert"], tmp_path / "art")  # absent: made
        export_model(tiny_dirs["bert"], tmp_path / "art")  # an artifact: replaced (re-export)
        assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
        assert (tmp_path / "art" / "manifest.json").stat().st_mode & 0o777 == 0o644
        export_model(tiny_dirs["bert"], mine, force=True)  # asked for
        assert not (mine / "notes.txt").exists() and (mine / "manifest.json").is_file()
    finally:
        os.umask(old)


def test_concurrent_builds_serialize(tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(TINY, art)
    procs = [subprocess.Popen([sys.executable, "-m", "nanotrt", "build", str(art), *flags], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for flags in ([], ["--dynamic"], ["--fp16"])]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(art)
    assert {"ort-fp32", "ort-int8-dynamic", "ort-fp16"} <= set(m.variants)  # none lost to a race
    for v in m.variants:
        for name in m.schedule(v).names():
            m.verify(name)
