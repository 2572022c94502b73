"""The queue home and its configuration file.

The home is a directory holding ``queuectl.db``, ``queuectl.config.json``,
``workers.pid``, the workers' log and the per-attempt output logs. It is
``--home``, else ``$QUEUECTL_HOME``, else the current directory.

Configuration is one JSON object, written atomically (temp file + rename)
under a lock on the home directory, so concurrent ``config set`` calls never
lose an update or leave a torn file.
"""

import contextlib
import functools
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

from queuectl.errors import ConfigError, QueueNotFoundError, StorageError

logger = logging.getLogger("queuectl.config")

DB_NAME = "queuectl.db"
CONFIG_NAME = "queuectl.config.json"
PIDFILE_NAME = "workers.pid"
WORKER_LOG_NAME = "workers.log"
LOGS_DIR_NAME = "logs"
# An attempt's two output streams, as its log files end: <attempt_id>.out / .err.
LOG_STREAMS = ("out", "err")


@dataclass(frozen=True)
class Home:
    """Where one queue keeps its files.

    The paths are computed once (cached_property): a busy worker asks for
    them several times per job.
    """

    path: str

    @classmethod
    def resolve(cls, option=None):
        """``--home`` wins, then ``$QUEUECTL_HOME``, then the current directory."""
        chosen = option or os.environ.get("QUEUECTL_HOME") or os.getcwd()
        return cls(os.path.abspath(os.path.expanduser(chosen)))

    @functools.cached_property
    def db_path(self):
        return os.path.join(self.path, DB_NAME)

    @functools.cached_property
    def config_path(self):
        return os.path.join(self.path, CONFIG_NAME)

    @functools.cached_property
    def pidfile_path(self):
        return os.path.join(self.path, PIDFILE_NAME)

    @functools.cached_property
    def worker_log_path(self):
        return os.path.join(self.path, WORKER_LOG_NAME)

    @functools.cached_property
    def logs_dir(self):
        return os.path.join(self.path, LOGS_DIR_NAME)

    def attempt_log_path(self, attempt_id, stream):
        """Where one attempt's full ``stream`` ("out" or "err") is kept."""
        return f"{self.logs_dir}{os.sep}{attempt_id}.{stream}"

    def spool_path(self, worker_id, stream):
        """Where a worker's running job writes ``stream`` (renamed to the attempt's log when it ends)."""
        return os.path.join(self.logs_dir, f".{worker_id}.{stream}")

    def require_existing(self):
        """Refuse a home that does not exist: a mistyped path is not an empty queue."""
        if not os.path.isdir(self.path):
            problem = "is not a directory" if os.path.exists(self.path) else "does not exist"
            raise QueueNotFoundError(f"queue home {self.path} {problem} (check --home or QUEUECTL_HOME)")

    def ensure(self):
        """Create the home if needed; fail with one clear line if we can't."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot use queue home {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"queue home {self.path} is not writable")

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the home while changing one of its files.

        The lock is taken on the directory itself, so no lock file is left
        behind; on platforms without flock the block runs unlocked.
        """
        self.ensure()
        try:
            import fcntl
        except ImportError:  # Windows: atomic rename still prevents torn files
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def write_atomically(path, text):
    """Replace ``path`` with ``text`` so readers see the old or new file, never half."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain write would.
        if hasattr(os, "fchmod"):
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory):
    """Make a rename or a new file in ``directory`` durable (where the OS allows it)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- settings --------------------------------------------------------------


def _integer(minimum, maximum):
    def parse(raw):
        try:
            value = int(str(raw).strip())
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise ConfigError(f"must be an integer from {minimum} to {maximum}")
        return value

    return parse


def _number(minimum, maximum, *, exclusive=False):
    """A finite number in range. Upper bounds keep every derived time
    (now + delay, now + lease) representable, and catch typos like 1e300."""

    def parse(raw):
        text = str(raw).strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value > minimum if exclusive else value >= minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            relation = ">" if exclusive else ">="
            raise ConfigError(f"must be a number {relation} {minimum:g} and <= {maximum:g}")
        # Keep whole numbers as ints so `config get` prints 2, not 2.0.
        return int(value) if value.is_integer() and "." not in text else value

    return parse


YEAR = 365 * 86400


@dataclass(frozen=True)
class Setting:
    default: object
    parse: object
    help: str


SETTINGS = {
    "max_retries": Setting(3, _integer(0, 1_000_000), "most attempts a job gets before the DLQ"),
    "backoff_base": Setting(2, _number(1, 1000), "retry n waits backoff_base ** n seconds"),
    "backoff_max_delay": Setting(300, _number(0, YEAR), "cap on one retry wait, in seconds"),
    "job_timeout": Setting(0, _number(0, YEAR), "default per-job time limit in seconds (0 = none)"),
    # A lease must outlast several renewal ticks (at least every 0.05 s).
    "lease_seconds": Setting(30, _number(0.2, 86400), "a claim lapses this long after the worker's last renewal"),
    "poll_interval": Setting(1.0, _number(0, 3600, exclusive=True), "longest an idle worker waits before looking again"),
    "log_retention_days": Setting(7, _number(0, 36500), "delete attempt logs older than this many days (0 = no age limit)"),
    "log_max_mb": Setting(1024, _number(0, 1_000_000_000), "keep attempt logs under this many MB, deleting the oldest (0 = no size limit)"),
}


def normalize_key(key):
    """Accept ``max-retries`` and ``max_retries`` alike; refuse unknown keys."""
    name = str(key).strip().lower().replace("-", "_")
    if name not in SETTINGS:
        known = ", ".join(SETTINGS)
        raise ConfigError(f"unknown config key {key!r} (known keys: {known})")
    return name


def defaults():
    return {key: setting.default for key, setting in SETTINGS.items()}


def load_config(home):
    """The effective configuration: defaults overlaid with the file's values."""
    values = defaults()
    values.update(_read_file(home.config_path))
    return values


def _read_file(path):
    try:
        # utf-8-sig: a BOM, as some Windows editors save the file, is fine.
        with open(path, encoding="utf-8-sig") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        home = os.path.dirname(path)
        raise StorageError(f"cannot use queue home {home}: Not a directory") from None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise StorageError(f"cannot read {path}: its JSON is nested too deeply") from None
    if not isinstance(raw, dict):
        raise StorageError(f"{path} does not hold a JSON object")
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in SETTINGS:
            try:
                values[name] = SETTINGS[name].parse(value)
            except ConfigError as exc:
                raise StorageError(f"{path}: {name} {exc.message}") from None
    return values


def set_value(home, key, raw_value):
    """Validate and persist one setting; returns the (key, value) stored."""
    name = normalize_key(key)
    try:
        value = SETTINGS[name].parse(raw_value)
    except ConfigError as exc:
        raise ConfigError(f"invalid value {raw_value!r} for {name}: {exc.message}") from None
    with home.locked():
        stored = _read_file(home.config_path)
        stored[name] = value
        write_atomically(home.config_path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    return name, value


class ConfigWatcher:
    """Gives a long-running worker the current config, re-reading on change.

    The file is looked at no more than every ``CHECK_INTERVAL`` seconds: a
    busy worker asks several times per job, and a ``config set`` still
    reaches it well within the time a person takes to notice.

    Only the first read may fail (the worker then refuses to start). Later,
    whatever goes wrong with the file, the worker keeps its last good
    settings and says so once per problem.
    """

    CHECK_INTERVAL = 0.05
    _UNREADABLE = object()  # the stamp of a file that could not be used

    def __init__(self, home, clock=time.monotonic):
        self._home = home
        self._clock = clock
        self._stamp = None
        self._values = None
        self._checked_at = None
        self._problem = None

    def current(self):
        now = self._clock()
        if self._values is not None and now - self._checked_at < self.CHECK_INTERVAL:
            return self._values
        self._checked_at = now
        try:
            stamp = self._file_stamp()
            if self._values is None or stamp != self._stamp:
                self._values = load_config(self._home)
                self._stamp, self._problem = stamp, None
        except StorageError as exc:
            if self._values is None:
                raise
            self._stamp = self._UNREADABLE
            if exc.message != self._problem:
                self._problem = exc.message
                logger.warning("Ignoring the config file, keeping the last good settings: %s", exc.message)
        return self._values

    def _file_stamp(self):
        path = self._home.config_path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
