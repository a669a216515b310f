"""Atomic writes: every file and directory goes through temp-then-rename, so an interrupted
export/build/train never leaves something that looks complete.

A full disk (ENOSPC, or a quota: EDQUOT) while writing becomes one NanotrtError naming the target; the
temp file/dir is removed and the previous version stays. Temp dirs carry the writer's pid, so ones left by
a killed process (SIGKILL cannot be cleaned up after) are swept by the next write of the same target.
Files and folders get the permissions a plain open()/mkdir() would (the umask), not mkstemp's private ones.

Inside an artifact: one writer at a time (``writer_lock``, a flock on the artifact folder), built files in
generation folders switched in by one manifest rename (``generation``), a replaced generation removed only
when no reader holds it (``retire``; readers: ``Manifest.hold``), leftovers of killed writers swept by the next
build (``sweep_generations``). An output folder a user already has is never replaced unless asked
(``check_output_dir``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nanotrt.runtime.errors import NanotrtError


def sha256_file(path: Path, chunk: int = 1 << 20, limit: int | None = None) -> str:
    """sha256 of the file's bytes (at most ``limit`` + 1 of them: enough to tell a longer file apart)."""
    h = hashlib.sha256()
    left = -1 if limit is None else limit + 1
    with open(path, "rb") as f:
        while left and (block := f.read(chunk if left < 0 else min(chunk, left))):
            h.update(block)
            left = max(left - len(block), 0) if left > 0 else left
    return h.hexdigest()


def umask() -> int:
    """The process umask (read without changing it where /proc says it; Linux >= 4.7)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


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
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; a plain open() would honour the umask
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
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700; the output is a plain folder like mkdir's
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


# --- output folders a user already has ----------------------------------------------------------

def check_output_dir(final: Path, is_ours: Any, force: bool, what: str, keep: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a folder this tool did not make: ``final`` may be absent, empty, or pass ``is_ours``
    (e.g. holds a nanotrt manifest); anything else needs ``force``. Never the current folder, one above it,
    or one holding a path of ``keep`` (the input being read), with or without ``force``."""
    final = Path(final).resolve()
    for p in (Path.cwd().resolve(), *(Path(k).resolve() for k in keep)):
        if p == final or final in p.parents:
            raise NanotrtError(f"-o {final} would replace {'the current folder' if p == Path.cwd().resolve() else p}"
                               f"{'' if p == final else ', which is inside it'}: choose another output folder")
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir() or final.is_symlink():
        raise NanotrtError(f"-o {final} exists and is not a folder: choose another output folder")
    if force:
        return
    try:
        empty = next(final.iterdir(), None) is None
    except OSError as e:
        raise NanotrtError(f"cannot read the output folder {final} ({e.strerror}): choose another one") from e
    if not empty and not is_ours(final):
        raise NanotrtError(f"-o {final} is a folder with files that is not a {what}: nanotrt never replaces a folder "
                           "it did not make; choose another output folder, or pass --force to replace it and "
                           "everything in it")


# --- one writer per artifact; generations of built files ----------------------------------------

_WRITING: set[str] = set()  # artifacts this process holds the writer lock of


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Serialize writers of one artifact (`nanotrt build`, `profile`, `calibrate-exit`): an exclusive flock on
    the artifact folder itself (no lock file to leave behind); a second writer waits, saying for what, and
    re-reads the manifest after. The kernel drops the lock when a writer dies."""
    key = os.path.realpath(root)
    if key in _WRITING:  # re-entrant within a process (build -> install_variant)
        yield
        return
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise NanotrtError(f"cannot open the artifact {root} ({e.strerror}): check that it exists") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"note: waiting for another nanotrt process writing {root} to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _WRITING.add(key)
        try:
            yield
        finally:
            _WRITING.discard(key)
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class Generation:
    """A new folder of built files inside an artifact: written under ``staging``, renamed to ``final`` by
    ``commit``. Readers that hold the folder it replaces keep their files (``retire``)."""

    staging: Path
    final: Path

    def commit(self, switch: Callable[[Path], str | None]) -> None:
        """Rename staging to final, then ``switch(final)`` writes the manifest that names it (one atomic rename)
        and returns the folder it replaced, which is retired. Interrupted after the rename, the unnamed final
        folder is swept by the next build (``sweep_generations``)."""
        os.replace(self.staging, self.final)
        old = switch(self.final)
        if old and old != self.final.name:
            retire(self.final.parent / old)


@contextlib.contextmanager
def generation(root: Path, name: str) -> Iterator[Generation]:
    """Staging ``.NAME.<hex>.tmp`` inside ``root`` (removed unless committed), final ``NAME.<hex>``."""
    token = secrets.token_hex(4)
    g = Generation(Path(root) / f".{name}.{token}.tmp", Path(root) / f"{name}.{token}")
    g.staging.mkdir()
    try:
        with _disk_full_as_error(g.final):
            yield g
    finally:
        shutil.rmtree(g.staging, ignore_errors=True)


def retire(folder: Path) -> bool:
    """Remove a replaced generation folder unless a reader holds it (a shared flock, ``Manifest.hold``);
    True when removed. A held one stays until a later build's sweep finds it free."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return not folder.exists()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def sweep_generations(root: Path, names: Iterable[str], referenced: Iterable[str]) -> list[str]:
    """Under the writer lock: remove what interrupted writers left inside the artifact: staging folders
    ``.NAME.<hex>.tmp``, generation folders ``NAME.<hex>`` the manifest no longer names (unless a reader holds
    them) and temp files of the manifest. Only those names, for ``names`` of known variants: nothing else in
    the folder is touched."""
    known, keep = set(names), set(referenced)
    removed = []
    for p in Path(root).iterdir():
        staged = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", p.name)
        gen = re.fullmatch(r"(.+)\.[0-9a-f]{8}", p.name)
        if staged and staged.group(1) in known and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif gen and gen.group(1) in known and p.name not in keep and p.is_dir() and not p.is_symlink():
            if not retire(p):
                continue
        elif re.fullmatch(r"\.manifest\.json\.[A-Za-z0-9_]{8}\.json", p.name) and p.is_file():
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p.name)
    return removed
