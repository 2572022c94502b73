"""Wake idle workers the moment a job is enqueued, instead of tight polling.

Each worker binds a datagram socket in Linux's abstract namespace (no file
to clean up, no path-length trouble) and records its name in the worker
registry. ``enqueue`` sends one byte to each after committing. A lost or
refused datagram costs nothing: workers still poll every ``poll_interval``,
so a missed wake-up only delays a job, it never strands one. Platforms
without abstract sockets simply rely on that polling.
"""

import os
import socket
import sys
import uuid

_PREFIX = "queuectl-wake-"
SUPPORTED = sys.platform.startswith("linux")


class WakeSocket:
    """The receiving end a worker waits on."""

    def __init__(self):
        self.address = None
        self._sock = None
        if not SUPPORTED:
            return
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind("\0" + name)
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        self._sock, self.address = sock, name

    def fileno(self):
        return self._sock.fileno() if self._sock else None

    def drain(self):
        """Swallow pending wake-ups: one pass of the loop serves them all."""
        if self._sock is None:
            return
        try:
            while self._sock.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def notify(addresses):
    """Nudge the workers at ``addresses``; errors mean a worker is gone or busy."""
    addresses = [a for a in addresses if a and a.startswith(_PREFIX)]
    if not addresses or not SUPPORTED:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for address in addresses:
            try:
                sock.sendto(b"!", "\0" + address)
            except OSError:
                pass
    finally:
        sock.close()
