"""Every exception and warning gdla raises, in one place.

Messages follow one rule: name the argument, say what was expected and what was received.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendWarning",
    "ConvergenceWarning",
    "DuplicateNameError",
    "GdlaError",
    "GdlaWarning",
    "InputError",
    "MatrixFileError",
    "PluginError",
    "PluginWarning",
    "RankError",
    "ResourceError",
    "ShapeError",
    "SingularMatrixError",
    "UnknownNameError",
    "UsageError",
]


class GdlaError(Exception):
    """Base class of every error gdla raises on purpose."""


class InputError(GdlaError, ValueError):
    """An argument has a value gdla cannot work with."""


class UsageError(InputError):
    """Bad usage, not bad data: an option the problem or optimizer does not declare, or a value it refuses.

    ``gdla solve ... -p side=diagonal`` or ``-o momentum=2``; the command line exits with code 2.
    """


class ShapeError(InputError):
    """Tensors whose shapes do not fit the problem or each other."""


class SingularMatrixError(InputError):
    """A matrix that has no inverse where one is needed."""


class MatrixFileError(InputError):
    """A matrix file that is missing, unreadable or of an unknown format."""


class PluginError(GdlaError):
    """A plugin that failed to load or registered something invalid (strict mode)."""


class UnknownNameError(PluginError, LookupError):
    """A problem or optimizer name that no plugin registered."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for the same kind of item."""


class ResourceError(GdlaError, MemoryError):
    """A problem too large for the memory available, or an allocation that failed during a solve."""


class BackendError(GdlaError, RuntimeError):
    """A backend that was asked for explicitly and cannot run."""


class RankError(GdlaError, RuntimeError):
    """Another rank of a distributed solve failed, left, or did not reach a collective within the process group's
    timeout; every rank stops (the rank that failed raises its own error)."""


class GdlaWarning(UserWarning):
    """Base class of gdla's warnings."""


class PluginWarning(GdlaWarning):
    """A plugin was skipped; everything else still loaded."""


class BackendWarning(GdlaWarning):
    """``backend="auto"`` fell back to autograd."""


class ConvergenceWarning(GdlaWarning):
    """The chosen method is not expected to reach ``tol`` within ``max_steps``."""
