"""Faults: export / build / train interrupted by SIGINT or killed by SIGKILL at random points leave the
previous output or the complete new one, never a mix; a full disk is one clear error with nothing
half-written; a graph file damaged or deleted while a runner streams is caught at its next load, naming
the file, and the process (and the runner) survive.

The default run does one trial per command and signal; `pytest -m slow` runs many (FAULT_TRIALS each).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError

FIX = Path(__file__).parent / "fixtures" / "glue"
FAULT_TRIALS = int(os.environ.get("NANOTRT_FAULT_TRIALS", "12"))
LOG = os.environ.get("NANOTRT_FAULT_LOG")  # benchmarks/results/reliability.md collects outcomes from here


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nanotrt", *args]


def _run_and_signal(cmd: list[str], sig: int, delay: float) -> tuple[int, str]:
    # SIGINT back to its default in the child: a shell starts background jobs with SIGINT ignored, and a
    # Python started that way never installs its KeyboardInterrupt handler (the trial would test nothing).
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def _hidden_leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


# --- what a consistent output looks like -------------------------------------------------------

def _artifact_state(art: Path) -> str | None:
    """None if absent; else the artifact's identity after checking it is complete (every graph of every
    variant present and matching its sha256, no orphan variant dirs)."""
    if not art.exists():
        return None
    m = Manifest.load(art)  # raises on a partial/invalid manifest
    for v in m.variants:
        for name in m.schedule(v).names():
            m.verify(name)
    dirs = {info.get("dir") for info in m.data["variants"].values()}
    orphans = [p.name for p in art.iterdir() if p.is_dir() and p.name not in dirs
               and p.name not in ("graphs", "tokenizer", "checkpoint") and not p.name.startswith(".")]
    assert not orphans, f"variant dirs not in the manifest: {orphans}"
    return f"max_length={m.tokenizer['max_length']} variants={','.join(sorted(m.variants))}"


def _checkpoint_state(ckpt: Path) -> str | None:
    if not ckpt.exists():
        return None
    from nanotrt.pipeline.model import load_model

    load_model(ckpt)  # complete and loadable
    return f"seed={json.loads((ckpt / 'ramp_metrics.json').read_text())['config']['seed']}"


def _trials(kind: str, work: Path, make_previous: Callable[[Path], None], new_cmd: Callable[[Path], list[str]],
            state: Callable[[Path], str | None], new_states: list[str], sig: int, n: int, seed: int) -> list[str]:
    """Run ``n`` interrupted runs against an output that already holds the previous version."""
    out = work / "out"
    make_previous(out)
    previous = state(out)
    t0 = time.perf_counter()  # one uninterrupted run (into a scratch copy) measures how long a run takes
    scratch = work / "scratch"
    shutil.copytree(out, scratch) if out.exists() else None
    subprocess.run(new_cmd(scratch), check=True, capture_output=True, timeout=600)
    duration = time.perf_counter() - t0
    assert state(scratch) == new_states[-1]
    rng = random.Random(seed)
    outcomes = []
    for _ in range(n):
        delay = rng.uniform(0.05, 1.05) * duration  # anywhere from start-up to (just past) the end
        rc, err = _run_and_signal(new_cmd(out), sig, delay)
        assert "Traceback" not in err, err
        got = state(out)
        assert got in (previous, *new_states), f"{kind}: a mix after {sig} at {delay:.2f}s: {got}"
        if sig == signal.SIGINT:
            # 130: interrupted and cleaned up; 0: finished first; -2: the signal landed while the interpreter
            # was starting or shutting down, when Python's own SIGINT handler is not installed
            assert rc in (0, 130, -signal.SIGINT), (rc, err)
            assert _hidden_leftovers(out.parent) == [], "SIGINT: temp files cleaned up"
            assert not out.exists() or _hidden_leftovers(out) == [], "SIGINT: staging inside the output cleaned up"
        outcomes.append("previous" if got == previous else "new" if got == new_states[-1] else "partial")
        if got != previous:  # back to the previous version for the next trial
            shutil.rmtree(out)
            make_previous(out)
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps({"command": kind, "signal": signal.Signals(sig).name, "trials": n,
                                "previous": outcomes.count("previous"), "new": outcomes.count("new"),
                                "earlier_variants_only": outcomes.count("partial"),
                                "mixed": 0, "run_s": round(duration, 2)}) + "\n")
    return outcomes


def _export_previous(tiny: Path) -> Callable[[Path], None]:
    def make(out: Path) -> None:  # in-process: no interpreter start-up
        from nanotrt.pipeline.export import export_model

        export_model(tiny, out, max_length=64)
    return make


def _export_case(tiny_dirs: dict[str, Path], tmp: Path, sig: int, n: int, seed: int) -> list[str]:
    return _trials("export", tmp, _export_previous(tiny_dirs["bert"]),
                   lambda out: _cli("export", str(tiny_dirs["bert"]), "-o", str(out)),
                   _artifact_state, ["max_length=128 variants=fp32"], sig, n, seed)


def _build_case(tiny_dirs: dict[str, Path], tmp: Path, sig: int, n: int, seed: int) -> list[str]:
    # Variants are switched in one at a time, each atomically: after ort-fp32 and before ort-int8 is a
    # consistent state too (every variant listed is complete).
    return _trials("build", tmp, _export_previous(tiny_dirs["bert"]),
                   lambda out: _cli("build", str(out), "--int8", "--calib-task", "cola", "--calib-size", "16",
                                    "--data-dir", str(FIX)),
                   _artifact_state, ["max_length=64 variants=fp32,ort-fp32", "max_length=64 variants=fp32,ort-fp32,ort-int8"],
                   sig, n, seed)


def _train_cmd(tiny: Path, out: Path, seed: int) -> list[str]:
    return _cli("train", "--task", "cola", "--model", str(tiny), "-o", str(out), "--data-dir", str(FIX),
                "--epochs", "2", "--batch-size", "8", "--seed", str(seed))


def _train_case(tiny_dirs: dict[str, Path], tmp: Path, sig: int, n: int, seed: int) -> list[str]:
    def previous(out: Path) -> None:
        from nanotrt.pipeline.train import TrainConfig, train

        train(tiny_dirs["bert"], out, TrainConfig(task="cola", epochs=1, batch_size=8, data_dir=str(FIX), seed=1))
    return _trials("train", tmp, previous, lambda out: _train_cmd(tiny_dirs["bert"], out, 2),
                   _checkpoint_state, ["seed=2"], sig, n, seed)


CASES = {"export": _export_case, "build": _build_case, "train": _train_case}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


@pytest.mark.parametrize("command,sig", [("export", "SIGINT"), ("build", "SIGKILL"), ("train", "SIGKILL")])
def test_interrupt_once(command: str, sig: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    CASES[command](tiny_dirs, tmp_path, SIGNALS[sig], 1, seed=hash((command, sig)) % 1000)


@pytest.mark.slow
@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("command", list(CASES))
def test_interrupt_many(command: str, sig: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    outcomes = CASES[command](tiny_dirs, tmp_path, SIGNALS[sig], FAULT_TRIALS, seed=7)
    assert len(outcomes) == FAULT_TRIALS
    assert "previous" in outcomes, "no trial interrupted the run: the random points missed it"


def test_killed_writer_temp_dirs_are_swept_and_previous_restored(tmp_path: Path) -> None:
    """SIGKILL leaves a temp dir (nothing can clean up after it); the next write of the same target
    removes it, and a kill between the two renames of a replace gives the previous version back."""
    from nanotrt.runtime.fsutil import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    final = tmp_path / "art"
    (tmp_path / f".art.tmp-{dead}-abc123").mkdir()  # a half-written new version
    old = tmp_path / f".art.tmp-{dead}-old"  # the previous version, moved aside, never moved back
    old.mkdir()
    (old / "manifest.json").write_text("previous")
    with atomic_dir(final) as tmp:
        assert (final / "manifest.json").read_text() == "previous"  # restored before the new write
        (tmp / "manifest.json").write_text("new")
    assert (final / "manifest.json").read_text() == "new"
    assert _hidden_leftovers(tmp_path) == []


def test_killed_build_leftovers_inside_the_artifact_are_swept(tmp_path: Path) -> None:
    """SIGKILL during `nanotrt build` leaves a staging folder, or a renamed generation the manifest never named,
    inside the artifact; the next build removes them (and a manifest temp file), and nothing else."""
    art = tmp_path / "art"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny-artifact", art)
    subprocess.run(_cli("build", str(art)), check=True, capture_output=True, timeout=300)
    built = Manifest.load(art).data["variants"]["ort-fp32"]["dir"]
    leftovers = [".ort-fp32.0123abcd.tmp", "ort-fp32.89abcdef", ".ort-int8.deadbeef.tmp", "whole-int8-dynamic.00aa11bb"]
    for name in leftovers:
        (art / name).mkdir()
        (art / name / "layer_00.onnx").write_bytes(b"half")
    (art / ".manifest.json.k3j4h5g6.json").write_text("{")
    mine = [art / "notes.12345678", art / "ort-fp32.notes"]  # a user's folders with look-alike names stay
    for d in mine:
        d.mkdir()
    p = subprocess.run(_cli("build", str(art), "--dynamic"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    left = sorted(x.name for x in art.iterdir())
    assert not set(leftovers) & set(left) and ".manifest.json.k3j4h5g6.json" not in left, left
    assert all(d.is_dir() for d in mine) and built in left
    for d in mine:
        d.rmdir()
    assert _artifact_state(art) == "max_length=128 variants=fp32,ort-fp32,ort-int8-dynamic"


def test_rebuild_keeps_a_running_readers_files(tmp_path: Path) -> None:
    """A reader holds its variant's folder: a rebuild switches the manifest to a new generation and leaves the
    old folder in place while the reader lives; the next build sweeps it once it is free."""
    from nanotrt.runtime.runner import Runner

    art = tmp_path / "art"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny-artifact", art)
    subprocess.run(_cli("build", str(art)), check=True, capture_output=True, timeout=300)
    runner = Runner.from_artifact(art, memory_budget="1layer", variant="ort-fp32")  # swaps: reads files per call
    old = runner.manifest.data["variants"]["ort-fp32"]["dir"]
    before = runner.predict(["a text", "another one"]).label_ids
    options = Manifest.load(art).data
    options["variants"]["ort-fp32"]["options"]["builder"] = -1  # force a rebuild
    Manifest(art, options).save()
    subprocess.run(_cli("build", str(art)), check=True, capture_output=True, timeout=300)
    assert Manifest.load(art).data["variants"]["ort-fp32"]["dir"] != old and (art / old).is_dir()
    assert (runner.predict(["a text", "another one"]).label_ids == before).all()  # still its own files
    runner.close()
    runner.manifest.release()
    del runner
    subprocess.run(_cli("build", str(art)), check=True, capture_output=True, timeout=300)
    assert not (art / old).exists()


# --- disk full ---------------------------------------------------------------------------------

def _enospc(*a: object, **k: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_on_call(n: int) -> Callable[..., object]:
    """A write function whose n-th call hits a full disk (the first ones succeed: mid-run)."""
    calls = {"n": 0}

    def write(real: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*a: object, **k: object) -> object:
            calls["n"] += 1
            if calls["n"] >= n:
                _enospc()
            return real(*a, **k)
        return wrapped
    return write


def test_disk_full_during_export(tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.export as ex

    monkeypatch.setattr(ex.torch.onnx, "export", _fail_on_call(3)(ex.torch.onnx.export))  # 3rd graph
    with pytest.raises(NanotrtError, match="no space left on the device writing .*art"):
        ex.export_model(tiny_dirs["bert"], tmp_path / "art")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp dir


def test_disk_full_during_export_keeps_previous(tiny_dirs: dict[str, Path], artifacts: dict[str, Path],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nanotrt.pipeline.export as ex

    shutil.copytree(artifacts["bert"], tmp_path / "art")
    before = _artifact_state(tmp_path / "art")
    monkeypatch.setattr(ex.np, "save", _enospc)  # the word-embedding table
    with pytest.raises(NanotrtError, match="no space left"):
        ex.export_model(tiny_dirs["bert"], tmp_path / "art", max_length=64)
    assert _artifact_state(tmp_path / "art") == before
    assert _hidden_leftovers(tmp_path) == []


def test_disk_full_during_build_cli(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """Through the CLI in a child whose onnx.save hits ENOSPC: one error line, exit 2, artifact intact."""
    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    before = _artifact_state(art)
    code = (
        "import errno, sys, onnx\n"
        "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device', a[1] if len(a) > 1 else None)\n"
        "onnx.save = full\n"
        "onnx.save_model = full\n"
        "from nanotrt.cli import main\n"
        f"sys.argv = ['nanotrt', 'build', {str(art)!r}]\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: no space left on the device"), p.stderr
    assert _artifact_state(art) == before
    assert _hidden_leftovers(art) == []


def test_disk_full_saving_checkpoint(tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch
    from nanotrt.pipeline.train import TrainConfig, train

    monkeypatch.setattr(safetensors.torch, "save_model", _enospc)
    cfg = TrainConfig(task="cola", epochs=1, batch_size=16, data_dir=str(FIX), limit=16)
    with pytest.raises(NanotrtError, match="no space left on the device writing .*ckpt"):
        train(tiny_dirs["bert"], tmp_path / "ckpt", cfg)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_writing_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nanotrt.runtime.fsutil import write_json

    write_json(tmp_path / "r.json", {"v": 1})
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(NanotrtError, match="no space left"):
        write_json(tmp_path / "r.json", {"v": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- a graph file damaged while a runner streams ---------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "truncated", "bytes flipped", "replaced by another graph"])
def test_graph_damaged_while_streaming(artifacts: dict[str, Path], tmp_path: Path, damage: str) -> None:
    from nanotrt.runtime.runner import Runner

    art = tmp_path / "art"
    shutil.copytree(artifacts["bert"], art)
    texts = ["a first text", "and a second one", "third"]
    layer = art / "graphs" / "layer_01.onnx"
    original = layer.read_bytes()
    with Runner.from_artifact(art) as probe:  # the largest graph + one short example: every graph reloads
        tight = probe.largest + probe.acts.block([(1, 8)])
    with Runner.from_artifact(art, memory_budget=tight) as r:
        good = r.predict(texts)
        if damage == "deleted":
            layer.unlink()
        elif damage == "truncated":
            layer.write_bytes(original[: len(original) // 3])
        elif damage == "bytes flipped":
            layer.write_bytes(original[:200] + bytes(b ^ 0xFF for b in original[200:232]) + original[232:])
        else:
            layer.write_bytes((art / "graphs" / "layer_02.onnx").read_bytes())
        with pytest.raises(NanotrtError, match=r"graph file .*layer_01\.onnx"):
            r.predict(texts)
        assert all(s.in_use == 0 for s in r.cache.slots.values())
        layer.write_bytes(original)  # repaired: the same runner, in the same process, works again
        again = r.predict(texts)
    np.testing.assert_allclose(again.logits, good.logits, atol=1e-6)


def test_interrupt_during_an_import_is_not_a_traceback(artifacts: dict[str, Path]) -> None:
    """Ctrl-C while onnxruntime imports surfaces as ImportError("initialization failed") caused by the
    KeyboardInterrupt (found by the SIGINT trials of build): still 'interrupted', exit 130."""
    code = (
        "import sys, importlib.abc\n"
        "class Interrupted(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'onnxruntime':\n"
        "            try:\n"
        "                raise KeyboardInterrupt\n"
        "            except KeyboardInterrupt as k:\n"
        "                raise ImportError('initialization failed') from k\n"
        "sys.meta_path.insert(0, Interrupted())\n"
        "from nanotrt.cli import main\n"
        f"sys.argv = ['nanotrt', 'predict', {str(artifacts['bert'])!r}, 'text']\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip() == "interrupted"
