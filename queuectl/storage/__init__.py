"""Pick and open the storage backend for a queue home.

``$QUEUECTL_DB`` may name the database: a file path or ``sqlite:///PATH``
(``sqlite:////abs/q.db`` or ``sqlite:///relative/q.db``) selects SQLite; ``postgresql://...`` is reserved for the PostgreSQL backend.
Without it, the queue is ``queuectl.db`` in the queue home.
"""

import os
import re

from queuectl.errors import StorageError
from queuectl.storage.base import Storage

__all__ = ["Storage", "open_storage"]

# "mysql://...", "file://...": a URL we don't serve, not a file name.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def open_storage(home, *, durable=True, create=True):
    """Open the queue of ``home``; ``durable=False`` only for worker transitions.

    ``create=False`` is for commands that only read: they must not turn a
    mistyped home into a new, empty queue.
    """
    url = os.environ.get("QUEUECTL_DB", "").strip()
    if url.startswith(("postgres://", "postgresql://")):
        raise StorageError("the PostgreSQL backend is not available in this version")
    if url.startswith("sqlite:///"):
        # sqlite:///PATH, where PATH is absolute (sqlite:////tmp/q.db) or relative to cwd.
        path = url[len("sqlite:///"):]
    elif url.startswith("sqlite:"):
        raise StorageError(f"QUEUECTL_DB {url!r} is not a sqlite:///PATH URL")
    elif _URL_SCHEME.match(url):
        raise StorageError(f"QUEUECTL_DB {url!r}: unsupported scheme (use sqlite:///PATH or a file path)")
    elif url:
        path = url
    else:
        if not create and not os.path.isdir(home.path):
            raise StorageError(f"queue home {home.path} does not exist (check --home or QUEUECTL_HOME)")
        home.ensure()
        path = home.db_path
    from queuectl.storage.sqlite import SqliteStorage

    return SqliteStorage(os.path.abspath(path), durable=durable)
