"""Non-blocking pipes between the supervisor and its children, read a line at a time.

Each child has two: `ctl` (one JSON message per line) and its stderr (log records and any C
library's output). The supervisor never blocks on either: it reads what is there, keeps an
unfinished line for the next read, and learns of end of file when the child is gone.
"""

from __future__ import annotations

import errno
import fcntl
import os


def set_nonblocking(fd: int, cloexec: bool = True) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    if cloexec:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)


def drain(fd: int) -> None:
    """Throw away whatever is readable now (a wake-up pipe)."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def read_available(fd: int) -> tuple[bytes, bool]:
    """Everything readable now, and whether the writer may still write (False at EOF)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return b"".join(chunks), True
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return b"".join(chunks), False
            raise
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


class LineReader:
    """The reading end of one pipe and the unfinished line read from it so far.

    Args:
        fd: a non-blocking file descriptor.
        max_line: a line longer than this is cut and handed over as it is (a runaway writer
            must not grow the buffer without bound).
    """

    def __init__(self, fd: int, max_line: int = 1 << 20):
        self.fd = fd
        self.max_line = max_line
        self.buf = b""
        self.open = True

    def read_lines(self) -> list[bytes]:
        """The complete lines now readable; at end of file also the unfinished rest (and open = False)."""
        data, self.open = read_available(self.fd)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if (not self.open or len(self.buf) > self.max_line) and self.buf:
            lines.append(self.buf)
            self.buf = b""
        return lines

    def close(self) -> None:
        os.close(self.fd)
