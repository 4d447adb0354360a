"""One run per run directory: an advisory lock (POSIX lockf) on `<run_dir>/.lock`, held for the whole run.
The operating system drops it when the process ends, however it ends, so a killed run leaves no
stale lock; a second run on the same directory fails at once, naming the holder."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import struct
import sys
from pathlib import Path

from pipeline.errors import PipelineError

_HELD: dict[
    str, dict
] = {}  # lock files this process holds: taking one again (the CLI, then the runner) is a no-op


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Held until the block ends. Re-entrant within a process: the CLI takes the lock before importing the heavy
    modules, so a second run is refused at once, and the runner's own `run_lock` then finds it held. (A second
    lockf on another descriptor would succeed, and closing that descriptor would drop the process's lock.)"""
    run_dir = Path(run_dir)
    path = run_dir / ".lock"
    key = os.path.realpath(path)
    if key in _HELD:
        yield _HELD[key]
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        try:  # a POSIX record lock: not inherited by forked workers (spaCy's n_process), gone with the process
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise PipelineError(f"cannot lock {path}: {e.strerror or e}") from None
            raise PipelineError(
                f"run directory {run_dir} is in use by {_holder(fd)}; wait for that run to end, "
                "or give this one another run_name"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        _HELD[key] = holder
        try:
            yield holder
        finally:
            _HELD.pop(key, None)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int, unknown: str = "another process") -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"PID {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return unknown


FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid (and padding)


def holder(run_dir: Path) -> str | None:
    """Who holds the run lock now, asked with F_GETLK, which takes nothing (`pipeline status` beside a running run);
    None when nobody does or the system cannot say (struct flock is laid out as FLOCK on Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
        return None if kind == fcntl.F_UNLCK else _holder(fd, unknown=f"PID {pid}")
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
