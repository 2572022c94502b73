"""Pick and open the storage backend for a queue home.

``$QUEUECTL_DB`` may name the database: a file path or ``sqlite:///PATH``
(``sqlite:////abs/q.db`` or ``sqlite:///relative/q.db``) selects SQLite; ``postgresql://...`` is reserved for the PostgreSQL backend.
Without it, the queue is ``queuectl.db`` in the queue home.
"""

import os
import re

from queuectl.errors import NoQueueInHomeError, QueueNotFoundError, StorageError
from queuectl.storage.base import Storage

__all__ = ["Storage", "open_storage"]

# "mysql://...", "file://...": a URL we don't serve, not a file name.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def open_storage(home, *, durable=True, create=True):
    """Open the queue of ``home``; ``durable=False`` only for worker transitions.

    ``create=False`` is for commands that add no work (reading, stopping,
    cancelling): they must not turn a mistyped home or QUEUECTL_DB, or a
    directory that holds no queue, into a new, empty queue. They get
    ``QueueNotFoundError`` instead.
    """
    url = os.environ.get("QUEUECTL_DB", "").strip()
    scheme = url[:16].lower()  # URL schemes are case-insensitive
    if scheme.startswith(("postgres://", "postgresql://")):
        raise StorageError("the PostgreSQL backend is not available in this version")
    if scheme.startswith("sqlite:///"):
        # sqlite:///PATH, where PATH is absolute (sqlite:////tmp/q.db) or relative to cwd.
        path = url[len("sqlite:///"):]
        if not path:
            raise StorageError(f"QUEUECTL_DB {url!r} names no file (sqlite:///PATH)")
    elif scheme.startswith("sqlite:"):
        raise StorageError(f"QUEUECTL_DB {url!r} is not a sqlite:///PATH URL")
    elif _URL_SCHEME.match(url):
        raise StorageError(f"QUEUECTL_DB {url!r}: unsupported scheme (use sqlite:///PATH or a file path)")
    else:
        path = url or None

    if path is None:
        if not create:
            home.require_existing()
            if not os.path.exists(home.db_path):
                raise NoQueueInHomeError(
                    f"no queue in {home.path}: {os.path.basename(home.db_path)} does not exist "
                    "(enqueue a job to create it, or check --home or QUEUECTL_HOME)"
                )
        home.ensure()
        path = home.db_path
    elif path == ":memory:":
        raise StorageError("QUEUECTL_DB ':memory:' would be a queue that vanishes with each command; name a file")
    elif not create and not os.path.exists(path):
        raise QueueNotFoundError(f"database {path} does not exist (check QUEUECTL_DB)")
    from queuectl.storage.sqlite import SqliteStorage

    return SqliteStorage(os.path.abspath(path), durable=durable)
