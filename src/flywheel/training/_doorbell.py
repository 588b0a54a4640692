"""The scheduler's doorbell: wake its loop now instead of at the next poll.

Two ways in, one ``wait``:

* **in process** — ``Doorbell.ring()``, e.g. from the executor's thread that saw an attempt exit;
* **across processes on this host** — ``ring(path)`` writes a byte into a named pipe
  (``.flywheel/training/doorbell``) that the running scheduler holds open; ``TrainingService
  .submit`` rings it, so a job submitted by ``flywheel jobs submit`` or the HTTP API starts
  without waiting for ``training.poll_interval``. Nobody listening (no scheduler, or one on
  another host) makes ring a no-op; the poll still picks the job up.

The reader opens the pipe read-write, so the pipe never reports end-of-file when the last
writer goes away (which would make ``select`` spin).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from pathlib import Path


def ring(path: Path) -> bool:
    """Wake the scheduler listening on ``path``; ``False`` when nobody listens."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # absent, or ENXIO: no reader
        return False
    try:
        os.write(fd, b"!")
    except BlockingIOError:  # full: it will wake anyway
        pass
    finally:
        os.close(fd)
    return True


class Doorbell:
    """The listening side (one per running scheduler loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                path.unlink()
                os.mkfifo(path, 0o600)
        self.path = path
        self._fifo = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def ring(self) -> None:
        """Wake ``wait`` (thread-safe, never blocks)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds passed; ``True`` if rung."""
        ready, _, _ = select.select([self._fifo, self._read], [], [], timeout)
        for fd in ready:
            _drain(fd)
        return bool(ready)

    def close(self) -> None:
        for fd in (self._fifo, self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            raise


__all__ = ["Doorbell", "ring"]
