"""When a solve stops: the stop rules in one small object, and the compact loss history.

A run stops on the first of: a non-finite loss or one that grew far beyond its start
(``diverged``), the callback (``callback``), the relative residual at or below ``tol``
(``converged``), ``patience`` steps in which neither the best loss nor the best residual improved
by 0.1% (``stalled``), or the step budget (``max_steps``).

The losses of the steps taken are kept packed (:class:`LossHistory`, 8 bytes a step) and handed
back as :class:`Losses`, a read-only list-like view of the same memory (``Result.losses``).
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import torch

__all__ = [
    "BLOW_UP",
    "MAX_PATIENCE",
    "STALL_IMPROVEMENT",
    "LossHistory",
    "Losses",
    "StopRules",
    "default_patience",
    "default_tol",
    "loss_array",
]

#: Loss growth over the starting loss that counts as divergence.
BLOW_UP = 1e12
#: A stall: neither the best loss nor the best residual improved by this fraction in ``patience`` steps.
STALL_IMPROVEMENT = 1e-3
#: The default patience never exceeds this many steps, whatever ``max_steps`` is: a run that has
#: not improved by 0.1% in 10,000 steps has stalled.
MAX_PATIENCE = 10_000


def default_tol(dtype: torch.dtype) -> float:
    """Relative-residual tolerance used when ``tol`` is not given: about 100 ulps of ``dtype``."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def default_patience(max_steps: int) -> int:
    """``max(100, max_steps // 10)``, capped at :data:`MAX_PATIENCE`."""
    return min(MAX_PATIENCE, max(100, max_steps // 10))


def loss_array(losses: torch.Tensor | np.ndarray) -> np.ndarray:
    """A 1-D tensor of losses as float64 numpy values on the CPU (a view where it already is one); an array as is."""
    if isinstance(losses, np.ndarray):
        return losses
    return losses.detach().to(device="cpu", dtype=torch.float64).numpy()


#: Stretches of at most this many losses are tested in a loop over floats (:meth:`StopRules.on_bulk`), longer ones
#: with numpy: the same verdicts.
SHORT_STRETCH = 64


class StopRules:
    """The stop tests of one run, fed one step at a time."""

    def __init__(self, tol: float, patience: int) -> None:
        self.tol = tol
        self.patience = patience
        self._first_loss: float | None = None
        self._best_loss = self._best_residual = math.inf
        self._mark_loss = self._mark_residual = math.inf
        self._mark_step = 0

    @property
    def checks_residual(self) -> bool:
        """Whether the residual is needed at all (``tol = 0`` runs every step)."""
        return self.tol > 0

    def steps_before_stall(self, step: int) -> int:
        """How many steps after ``step`` may run without looking: the stall test cannot fire before the last of them.

        ``stalled`` needs ``patience`` steps since the last checkpoint, and a step can only move the
        checkpoint later, so a run of this many steps can stall at its last step at the earliest.
        """
        return max(1, self._mark_step + self.patience - step)

    def on_loss(self, step: int, loss: float) -> str | None:
        """``"diverged"`` if ``loss`` is not finite or grew ``BLOW_UP``-fold over the first one."""
        if self._first_loss is None:
            self._first_loss = loss
        if not math.isfinite(loss) or (step > 1 and loss > BLOW_UP * max(self._first_loss, 1e-30)):
            return "diverged"
        return None

    def on_bulk(self, losses: torch.Tensor | np.ndarray, first_step: int = 1) -> int | None:
        """:meth:`on_loss` over the losses of steps ``first_step, first_step + 1, ...`` at once, vectorised.

        ``losses`` is a 1-D tensor or what :func:`loss_array` made of one.
        Returns the position (1-based, in ``losses``) of the step that diverged, or ``None``.
        """
        if len(losses) == 0:
            return None
        values = loss_array(losses)  # numpy: no dispatch per call
        if self._first_loss is None:
            self._first_loss = float(values[0])
        limit = BLOW_UP * max(self._first_loss, 1e-30)
        if len(values) <= SHORT_STRETCH:  # a few steps: one loop over floats costs less than numpy's calls
            for index, value in enumerate(values.tolist()):
                if not math.isfinite(value) or (value > limit and (index > 0 or first_step != 1)):
                    return index + 1
            return None
        bad = ~np.isfinite(values)
        grown = values > limit
        if first_step == 1:
            grown[0] = False  # the first step's loss is the reference
        bad |= grown
        hits = np.flatnonzero(bad)
        return int(hits[0]) + 1 if len(hits) else None

    def on_residual(self, step: int, loss: float, residual: float) -> str | None:
        """``"converged"`` at ``0 <= residual <= tol``; ``"stalled"`` after ``patience`` steps without progress."""
        hit = self.on_residuals(step, (loss,), (residual,))
        return None if hit is None else hit[1]

    def on_residuals(
        self, first_step: int, losses: Sequence[float], residuals: Sequence[float]
    ) -> tuple[int, str] | None:
        """:meth:`on_residual` over steps ``first_step, first_step + 1, ...``: where the first stop falls, and why.

        Returns ``(position in the sequences, reason)``, or ``None``; the state is left as after
        that step (or the last). One loop over plain floats, so a bulk run's replay costs little.
        """
        tol, patience, keep = self.tol, self.patience, 1 - STALL_IMPROVEMENT
        best_loss, best_residual = self._best_loss, self._best_residual
        mark_loss, mark_residual, mark_step = self._mark_loss, self._mark_residual, self._mark_step
        found = None
        for index, (loss, residual) in enumerate(zip(losses, residuals, strict=True)):
            if 0 <= residual <= tol:  # a negative residual (a plugin's broken rule) never passes
                found = (index, "converged")
                break
            # progress is measured against a checkpoint, so slow steady progress counts; either the loss
            # or the residual may make it (a least-squares loss levels off at its nonzero minimum while
            # the residual still falls). ``<`` keeps the best where a value is NaN, as min() would.
            if loss < best_loss:
                best_loss = loss
            if residual < best_residual:
                best_residual = residual
            if best_loss < mark_loss * keep or best_residual < mark_residual * keep:
                mark_loss, mark_residual, mark_step = best_loss, best_residual, first_step + index
            elif first_step + index - mark_step >= patience:
                found = (index, "stalled")
                break
        self._best_loss, self._best_residual = best_loss, best_residual
        self._mark_loss, self._mark_residual, self._mark_step = mark_loss, mark_residual, mark_step
        return found


class LossHistory:
    """The loss of every step as packed float64 (8 bytes a step), growing in chunks as steps run."""

    def __init__(self) -> None:
        self._values = array("d")

    def append(self, loss: float) -> None:
        self._values.append(loss)

    def extend(self, losses: torch.Tensor | np.ndarray) -> None:
        """Append a 1-D tensor of losses (or what :func:`loss_array` made of one) in one copy."""
        self._values.frombytes(np.ascontiguousarray(loss_array(losses)).view(np.uint8))

    def __len__(self) -> int:
        return len(self._values)

    def to_list(self) -> list[float]:
        return self._values.tolist()

    def scale_by_power_of_two(self, exponent: int) -> None:
        """Multiply every loss by ``2^exponent`` in place: exact, except that a loss beyond float64's range in those
        units becomes ``inf`` (or one below it ``0``), as it would be computed there."""
        if exponent and self._values:
            _times_power_of_two(np.frombuffer(self._values, dtype=np.float64), exponent)

    def view(self, last: Callable[[], float] | None = None, exponent: int = 0) -> Losses:
        """The history as a read-only :class:`Losses`, sharing its memory (take it once the run is over).

        ``last``, where given, computes one more loss (the one at the answer) when the losses are first read, times
        ``2^exponent`` (as :meth:`scale_by_power_of_two` scales the others): a caller who never reads them does not
        pay for it.
        """
        losses = Losses(self._values)
        losses._pending = None if last is None else (last, exponent)
        return losses


def _times_power_of_two(values: np.ndarray, exponent: int) -> None:
    """``values *= 2^exponent`` in place: exact, except that a value beyond float64's range becomes ``inf`` (or one
    below it ``0``), as it would be computed in those units."""
    with np.errstate(over="ignore", under="ignore"):
        np.ldexp(values, exponent, out=values)


class Losses(Sequence[float]):
    """``Result.losses``: the loss after each step (``losses[i]`` after ``i`` steps), read-only, packed float64.

    It reads as the list of floats it replaces (``len``, indexing, slicing to a ``list``, iteration,
    ``min``/``max``, ``==`` against a list, a tuple or another ``Losses``) at 8 bytes a step
    (:attr:`nbytes`) instead of a Python float's 32. :meth:`numpy` (and ``np.asarray``) is a
    read-only view of the same memory; :meth:`tensor` is a float64 copy (a tensor cannot be
    read-only). It pickles compactly; ``Result.to_dict()`` turns it into a JSON list. The last entry of a solve's
    losses (the loss at the answer) may be computed when they are first read (its length is known before).
    """

    __slots__ = ("_pending", "_raw")

    def __init__(self, values: Iterable[float] = ()) -> None:
        """Wrap packed float64 ``values`` (an ``array('d')``, shared, not copied) or copy any iterable of floats."""
        self._raw = values if isinstance(values, array) and values.typecode == "d" else array("d", values)
        #: ``(compute, exponent)``: the last loss, computed on first read (:meth:`LossHistory.view`), or ``None``.
        self._pending: tuple[Callable[[], float], int] | None = None

    @property
    def _values(self) -> array:
        """The packed losses, the pending last one computed and appended first."""
        if self._pending is not None:
            compute, exponent = self._pending
            value = np.array([compute()], dtype=np.float64)
            _times_power_of_two(value, exponent)  # as LossHistory.scale_by_power_of_two scaled the others
            self._raw.append(float(value[0]))
            self._pending = None
        return self._raw

    def __len__(self) -> int:
        return len(self._raw) + (self._pending is not None)

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return self._values[index].tolist()
        return self._values[index]

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def __reversed__(self) -> Iterator[float]:
        return reversed(self._values)

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, Losses):
            return self._values == other._values
        if isinstance(other, (list, tuple)):  # as list == list: same length, equal items in order
            return len(other) == len(self._values) and all(map(operator.eq, self._values, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares by value, as a list

    def __repr__(self) -> str:
        shown = self._values.tolist() if len(self._values) <= 6 else [*self._values[:3], ..., *self._values[-2:]]
        items = ", ".join("…" if value is ... else repr(value) for value in shown)
        return f"Losses([{items}], len={len(self._values)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Losses, (self._values,))

    @property
    def nbytes(self) -> int:
        """The bytes the losses take: 8 a step."""
        return len(self._values) * self._values.itemsize

    def tolist(self) -> list[float]:
        """A plain list of Python floats (a copy, 32 bytes a step)."""
        return self._values.tolist()

    def numpy(self) -> np.ndarray:
        """The losses as a read-only float64 NumPy array sharing this memory (no copy)."""
        view = np.frombuffer(self._values, dtype=np.float64) if self._values else np.empty(0, dtype=np.float64)
        view.flags.writeable = False
        return view

    def tensor(self) -> torch.Tensor:
        """The losses as a new float64 CPU tensor (a copy: torch has no read-only tensors)."""
        return torch.from_numpy(self.numpy().copy())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        view = self.numpy()
        if copy is False and dtype is not None and np.dtype(dtype) != view.dtype:
            raise ValueError(f"Losses.__array__: dtype {dtype} needs a copy, but copy=False was given")
        if dtype is not None or copy:
            return view.astype(view.dtype if dtype is None else dtype, copy=True)
        return view
