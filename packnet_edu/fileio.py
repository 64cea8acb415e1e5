"""Writing files safely: every file atomically, one writer per folder.

`atomic_write` is the one way this package writes a file: into a hidden
temporary file in the same folder (`.NAME.<random>.tmp`), flushed to disk,
then renamed over NAME. A reader, or a run killed mid-write, sees either the
old file or the new one, never half of each. If the write fails (disk full,
no permission) the old file is untouched and the temporary one removed.

`FolderLock` makes sure only one process writes to an output folder. It is an
advisory `fcntl.flock` on OUT/.lock, which names the holder's pid; the file is
removed on release. The operating system drops the flock when the process
dies however it dies, so a .lock left by a killed run is recognised as stale
(the file is there, nobody holds it) and simply taken over.

This module imports nothing from the package: every writer can use it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Callable, Iterable, Union

PathLike = Union[str, Path]
TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file that could not be written; the message (its strerror) says which,
    why, and that the previous version (if any) is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_write(path: PathLike, data: Union[bytes, str, Callable]) -> Path:
    """Write `data` (bytes, text, or a function called with the open binary
    file) to `path` atomically; returns the path.

    The temporary file is created with mode 0666 minus the umask (usually
    0644), as `open` would create the file itself: not mkstemp's 0600."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"{path} is a folder: give a file name, e.g. {path / 'out.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(err.errno, f"cannot create the folder {path.parent} ({_why(path.parent, err)}): "
                                    "choose a writable location") from None
    tmp, created = _tmp_name(path), False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # Only a file this call created, and quietly: on a read-only disk even
        # unlinking a missing file fails (EROFS), which would hide the real
        # error behind the temporary file's name.
        if created:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise _write_error(path, err) from None
        if isinstance(err, RuntimeError) and "unexpected pos" in str(err):
            # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    return path


def _why(folder: Path, err: OSError) -> str:
    """Why `folder` cannot be made: the file in the way if there is one, else the OS's reason."""
    for p in [folder, *folder.parents]:
        if p.exists():
            return f"{p} is a file, not a folder" if not p.is_dir() else str(err.strerror or err)
    return str(err.strerror or err)


def _write_error(path: Path, err: OSError) -> WriteError:
    kept = "the previous version is intact" if path.exists() else "nothing was written"
    hint = {errno.ENOSPC: "free some disk space and run again",
            errno.EDQUOT: "free some disk space and run again",
            errno.EACCES: "choose a folder you can write to",
            errno.EPERM: "choose a folder you can write to",
            errno.EROFS: "choose a folder on a writable disk"}.get(err.errno, "fix that and run again")
    return WriteError(err.errno, f"cannot write {path}: {err.strerror or err} ({kept}); {hint}")


def leftover_temp_files(folder: PathLike, names: Iterable[str]) -> list:
    """Temporary files atomic_write left in `folder` for the given file names
    (a process killed between creating and renaming one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for n in names for p in folder.glob(f".{n}.*{TMP_SUFFIX}") if p.is_file())


def remove_leftover_temp_files(folder: PathLike, names: Iterable[str]) -> list:
    """Delete leftover temporary files of `names` in `folder`. Call it only
    while holding the folder's lock: then no other writer is mid-write."""
    gone = leftover_temp_files(folder, names)
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def check_writable(folder: PathLike) -> Path:
    """Create `folder` if needed and prove a file can be written in it, before
    any long work starts. Raises WriteError with what to do."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(errno.ENOTDIR, f"{folder} is a file, not a folder: choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".write-test", b"").unlink()
    except OSError as err:
        raise WriteError(err.errno, f"cannot write to {folder} ({_why(folder, err)}): "
                                    "choose a folder you can write to") from None
    return folder


class FolderLock:
    """`with FolderLock(out):` -- this process is the only writer of `out`.

    Raises FolderBusyError at once (no waiting) if a live process holds it."""

    def __init__(self, folder: PathLike, what: str = "packnet_edu"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / ".lock"
        self._fd = None

    def acquire(self) -> "FolderLock":
        import fcntl
        check_writable(self.folder)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise FolderBusyError(f"{self.folder} is in use by {holder}: wait for it to finish, "
                                      "or choose another output folder") from None
            try:    # still the file at .lock? (a releasing holder unlinks it: then lock the new one)
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.what} (pid {os.getpid()})".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove OUT/.lock, then unlock: a process killed before this leaves the
        file behind, unlocked, and the next one takes it over."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)            # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class FolderBusyError(WriteError):
    """Another live process is writing to this folder."""

    def __init__(self, message: str):
        super().__init__(errno.EBUSY, message)
