"""One exception family: the CLI turns any of these into a single line on stderr.

A traceback reaching the user means a bug, not bad input.
"""


def one_line(text: str) -> str:
    """`text` with newlines and other control characters escaped: a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def why(e: BaseException) -> str:
    """An exception as one short line, for a warning: its type and its first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


class KdsearchError(Exception):
    """Base of every error kdsearch reports to the user as one line."""

    exit_code = 2


class StudyFileError(KdsearchError):
    """A study file is missing, unparsable or fails validation."""


class DataError(KdsearchError):
    """A data set cannot be found, downloaded or read."""


class CacheError(KdsearchError):
    """The teacher cache cannot be written or read."""


class StorageError(KdsearchError):
    """The study storage (SQLite, PostgreSQL) cannot be reached or used."""


class NonFiniteLossError(KdsearchError):
    """Training produced a NaN or infinite loss."""


class UsageError(KdsearchError):
    """A command-line argument or environment variable is out of range or contradictory."""


class TeacherFileError(KdsearchError):
    """A teacher file is missing, does not load, or does not fit the data (input shape, classes)."""
