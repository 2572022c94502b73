"""A worker's log: the guide's lines, to the console or to a shared file.

A worker writes two lines per job. With logging's stock handlers those two
lines cost a busy worker about as much CPU as the job's database work
(bench/GAPS.md), so the handler here does less per line:

- the line is formatted once and written with a single ``write()``: no
  text-layer buffering, no separate flush. A shared ``workers.log`` is
  opened with ``O_APPEND``, so lines from several workers never interleave
  inside a line;
- the timestamp text is reused within the same second;
- nothing is looked up that the format doesn't print (caller, thread and
  process names);
- ``log_lines`` writes several lines at once, and when this handler is the
  only place they would go, without building a LogRecord for each.

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

# The handler configure() installed on the "queuectl" logger, if any.
_installed = None


def configure(log_file=None):
    """Send the ``queuectl`` loggers' INFO and above to ``log_file``, or to stderr."""
    global _installed
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        handler = LineHandler(fd=fd, encoding="utf-8", with_time=True)
    else:
        handler = LineHandler(stream=sys.stderr)
    logging._srcfile = None  # no caller lookup per record
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger("queuectl")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    _installed = handler
    return handler


def log_lines(logger, lines):
    """Log ``(level, message, args)`` lines in order, as ``logger.log`` would.

    When the installed LineHandler is the only place they can go, they are
    formatted here, the same way, and written with one write(). Anywhere
    else (a test capturing records, another handler) they go through logging.
    """
    handler = _sole_handler(logger)
    if handler is not None:
        try:
            text = "".join(
                handler.format_line(level, message % args if args else message)
                for level, message, args in lines
                if logger.isEnabledFor(level)
            )
        except Exception:
            pass  # let logging report what is wrong with the line
        else:
            try:
                handler.write(text)
            except Exception:
                pass  # as with logging's handlers: a log that can't be written never stops the worker
            return
    for level, message, args in lines:
        logger.log(level, message, *args)


def _sole_handler(logger):
    handler = _installed
    if handler is None or handler.closed:
        return None
    parent = logger.parent
    if logger.handlers or logger.filters or not logger.propagate or parent is None:
        return None
    if parent.name != "queuectl" or parent.handlers != [handler] or parent.filters:
        return None
    if handler.filters or handler.level > logging.INFO:
        return None
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
        return self.time_text(record.created, record.msecs)

    def time_text(self, created, msecs):
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(self.default_time_format, self.converter(created))
        return self.default_msec_format % (self._second_text, msecs)


class LineHandler(logging.Handler):
    """Write each record as one line with one write() call.

    Given a ``stream`` that is the process's own stderr, it writes to its
    file descriptor directly; any other stream is written to as logging's
    StreamHandler would. ``with_time`` picks the file format (time and
    process id first) over the console's.
    """

    def __init__(self, *, fd=None, stream=None, encoding=None, with_time=False):
        super().__init__()
        self.closed = False
        self._stream = None
        self._owns_fd = fd is not None
        errors = "backslashreplace"
        if fd is None and stream is not None:
            fd = _raw_fd(stream)
            if fd is None:
                self._stream = stream
            else:
                stream.flush()  # what was printed before comes first
                encoding = getattr(stream, "encoding", None)
                errors = getattr(stream, "errors", None) or errors
        self._fd = fd  # None with no stream either: stderr is closed, lines go nowhere
        # Incremental, so a codec that starts with a byte order mark
        # (utf-8-sig, utf-16) writes it once, not before every line.
        self._encode = codecs.getincrementalencoder(encoding or "utf-8")(errors).encode
        self._with_time = with_time
        self.setFormatter(SecondCachingFormatter(FILE_FORMAT if with_time else CONSOLE_FORMAT))

    def format_line(self, level, message):
        """The line ``emit`` would write for a record made now, with ``message`` already formatted."""
        if not self._with_time:
            return f"{logging.getLevelName(level)} - {message}\n"
        created = time.time()
        stamp = self.formatter.time_text(created, int((created - int(created)) * 1000))
        return f"{stamp} [{os.getpid()}] {logging.getLevelName(level)} - {message}\n"

    def emit(self, record):
        try:
            self.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def write(self, text):
        if not text:
            return
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
            return
        if self._fd is None:
            return
        data = self._encode(text)
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self):
        self.closed = True
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
