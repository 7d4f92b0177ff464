"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class MedunetError(Exception):
    """Base class: the user's input or arguments are wrong. The message names the file and the problem."""


class DataError(MedunetError):
    """An image, label or dataset folder is missing, unreadable or inconsistent."""


class CheckpointError(MedunetError):
    """A checkpoint or run folder is missing, corrupt or incompatible."""


class ConfigError(MedunetError):
    """An option or configuration value is out of range."""


class RunInterrupted(MedunetError):
    """Ctrl-C during training; the message says which epoch last.pt holds and how to resume (exit 130)."""
