"""A worker's log: the guide's lines, to the console or to a shared file.

A worker writes two lines per job. With logging's stock handlers those two
lines cost a busy worker about as much CPU as the job's database work
(measured: bench/GAPS.md), so the handler here does less per line:

- the line is formatted once and written with a single ``write()``: no
  text-layer buffering, no separate flush. A shared ``workers.log`` is
  opened with ``O_APPEND``, so lines from several workers never interleave
  inside a line;
- the timestamp text is reused within the same second;
- nothing is looked up that the format doesn't print (caller, thread, and
  process names).

When stderr has been swapped for something else (a test's capture), lines go
through that object instead, as logging would.
"""

import codecs
import logging
import os
import sys
import time

FILE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s - %(message)s"
CONSOLE_FORMAT = "%(levelname)s - %(message)s"


def configure(log_file=None):
    """Send the ``queuectl`` loggers' INFO and above to ``log_file``, or to stderr."""
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        handler = LineHandler(fd=fd, encoding="utf-8")
        handler.setFormatter(SecondCachingFormatter(FILE_FORMAT))
    else:
        handler = LineHandler(stream=sys.stderr)
        handler.setFormatter(SecondCachingFormatter(CONSOLE_FORMAT))
    logging._srcfile = None  # no caller lookup per record
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger("queuectl")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    return handler


class SecondCachingFormatter(logging.Formatter):
    """logging.Formatter's output, with the time text built once per second."""

    def __init__(self, fmt):
        super().__init__(fmt)
        self._second = None
        self._second_text = ""

    def formatTime(self, record, datefmt=None):
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(self.default_time_format, self.converter(record.created))
        return self.default_msec_format % (self._second_text, record.msecs)


class LineHandler(logging.Handler):
    """Write each record as one line with one write() call.

    Given a ``stream`` that is the process's own stderr, it writes to its
    file descriptor directly; any other stream is written to as logging's
    StreamHandler would.
    """

    def __init__(self, *, fd=None, stream=None, encoding=None):
        super().__init__()
        self._stream = None
        self._owns_fd = fd is not None
        if fd is None and stream is not None:
            fd = _raw_fd(stream)
            if fd is None:
                self._stream = stream
            else:
                stream.flush()  # what was printed before comes first
                encoding = getattr(stream, "encoding", None)
        self._fd = fd
        # Incremental, so a codec that starts with a byte order mark
        # (utf-8-sig, utf-16) writes it once, not before every line.
        self._encode = codecs.getincrementalencoder(encoding or "utf-8")("backslashreplace").encode

    def emit(self, record):
        try:
            line = self.format(record) + "\n"
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()
                return
            data = self._encode(line)
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except Exception:
            self.handleError(record)

    def close(self):
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def _raw_fd(stream):
    """stderr's file descriptor, if ``stream`` is the process's real stderr."""
    if stream is not sys.__stderr__:
        return None
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
