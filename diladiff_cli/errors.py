"""User-facing errors.

Anything raised as a :class:`DiladiffError` is bad input or an environment problem
the user can fix: the CLI prints its message on one line and exits non-zero,
without a traceback. Everything else is a bug and keeps its traceback.
"""


class DiladiffError(Exception):
    """An error whose message is shown to the user as one line (exit code 1)."""

    exit_code = 1


class RecipeError(DiladiffError):
    """A malformed recipe or override (exit code 2, like a usage error)."""

    exit_code = 2


class CheckpointError(DiladiffError):
    """A checkpoint that is missing, unreadable, of another stage or of other shapes."""


class TrainingDiverged(DiladiffError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
