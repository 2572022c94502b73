"""The queuectl exception family, and the exit status each one maps to.

Exit statuses follow Click's convention: 2 for input the user got wrong
(malformed JSON, a bad field, an unknown config key), 1 for a request the
queue cannot honour in its current state (unknown job id, duplicate id, a
database that is not ours).
"""


class QueueCtlError(Exception):
    """queuectl failed."""

    exit_code = 1

    def __init__(self, message=None):
        super().__init__(message or self.__doc__.strip().splitlines()[0])

    @property
    def message(self):
        return str(self.args[0])


class ValidationError(QueueCtlError):
    """Invalid input."""

    exit_code = 2


class ConfigError(ValidationError):
    """Invalid configuration."""


class JobNotFoundError(QueueCtlError):
    """No such job."""


class AttemptNotFoundError(QueueCtlError):
    """The job has no such attempt."""


class DuplicateJobError(QueueCtlError):
    """A job with this id already exists."""


class InvalidTransitionError(QueueCtlError):
    """The job is not in a state that allows this."""


class StorageError(QueueCtlError):
    """The queue database cannot be used."""


class DiskFullError(StorageError):
    """The disk holding the queue database is full."""


class QueueNotFoundError(StorageError):
    """There is no queue there."""


class NoQueueInHomeError(QueueNotFoundError):
    """The queue home exists but holds no queue yet."""


class WorkerError(QueueCtlError):
    """Workers could not be started or stopped."""
