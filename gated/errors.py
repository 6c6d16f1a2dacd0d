"""The exceptions gated raises: one root, each also a builtin kind."""

from __future__ import annotations


class GatedError(Exception):
    """Root of every error gated raises on purpose."""


class ConfigError(GatedError, ValueError):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DriverError(GatedError, OSError):
    """A device could not be opened, read or driven."""


class StorageError(GatedError, OSError):
    """The database could not be opened or written."""


class RegistryImportError(GatedError, ValueError):
    """A registry file has a bad row; nothing of the file was imported."""


class PassError(GatedError, ValueError):
    """A pass could not be issued (bad key, bad claims)."""


class EventError(GatedError, ValueError):
    """A body is not an event of the vocabulary (unknown kind, a field missing or wrong)."""
