"""Atomic writes: every file and directory goes through temp-then-rename, so an interrupted
export/build/train never leaves something that looks complete.

A full disk (ENOSPC, or a quota: EDQUOT) while writing becomes one NanotrtError naming the target; the
temp file/dir is removed and the previous version stays. Temp dirs carry the writer's pid, so ones left by
a killed process (SIGKILL cannot be cleaned up after) are swept by the next write of the same target.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nanotrt.runtime.errors import NanotrtError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same dir, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(target: Path) -> NanotrtError:
    return NanotrtError(f"no space left on the device writing {target}: free some space (or write elsewhere) "
                        "and run again; nothing was half-written and the previous version, if any, is intact")


@contextlib.contextmanager
def _disk_full_as_error(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full_error(target) from e
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with _disk_full_as_error(path):
            yield Path(tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts and reports are meant to be shared
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale(final: Path) -> int:
    """Remove temp dirs beside ``final`` left by writers that no longer run (killed mid-write)."""
    removed = 0
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        pid = p.name[len(final.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if p.name.endswith("-old") and not final.exists():  # killed between the two renames
                os.replace(p, final)  # the previous version comes back
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp dir next to ``final``; on success it replaces ``final`` in one rename.

    On any exception (including KeyboardInterrupt) the temp dir is removed and ``final`` is untouched.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        with _disk_full_as_error(final):
            yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            # .tmp- prefix too: if killed between the two renames, the next write sweeps it
            old = final.with_name(f".{final.name}.tmp-{os.getpid()}-old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
