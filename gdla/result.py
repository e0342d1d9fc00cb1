"""What :func:`gdla.solve` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gdla.stopping import Losses

__all__ = ["BATCH_STATUS", "STOP_REASONS", "Metrics", "Result"]

#: Why a run ended, with the sentence shown to people.
STOP_REASONS = {
    "converged": "the relative residual reached tol",
    "max_steps": "max_steps iterations ran without reaching tol",
    "diverged": "the loss became NaN/Inf or grew far beyond its starting value",
    "stalled": "the loss stopped improving before reaching tol",
    "callback": "the callback asked to stop",
}

#: ``Result.batch_status`` codes, one per member of a batched problem (as ``torch.linalg.inv_ex``'s
#: ``info``: 0 is success).
BATCH_STATUS = {0: "converged", 1: "not converged", 2: "non-finite"}


class Metrics(dict):  # type: ignore[type-arg]
    """``Result.metrics``: a ``dict`` of floats whose costly figures are computed when first read.

    A problem's :meth:`~gdla.Problem.metrics` may give a figure as a zero-argument callable (an
    error against a reference inverse is an O(n³) factorisation): it runs, under
    ``torch.no_grad()``, when that key is read, or when the whole mapping is (``items()``,
    ``values()``, ``==``, ``repr``, ``to_dict``, printing); reading ``"error"`` alone leaves the others
    pending. A figure that turns out NaN adds a sentence saying why to ``notes`` (the result's
    ``warnings``), never passing for 0.
    """

    def __init__(self, figures: dict[str, Any], notes: list[str] | None = None) -> None:
        figures = dict(dict.items(figures))  # another Metrics' figures as they stand, pending ones unrun
        super().__init__(figures)
        self._notes = notes if notes is not None else []
        self._pending = {key: value for key, value in figures.items() if callable(value)}
        for key, value in figures.items():
            if not callable(value):
                self._note_if_undefined(key, value)

    def _resolve(self, key: str) -> None:
        compute = self._pending.pop(key, None)
        if compute is not None:
            with torch.no_grad():
                value = float(compute())
            super().__setitem__(key, value)
            self._note_if_undefined(key, value)

    def _resolve_all(self) -> None:
        for key in list(self._pending):
            self._resolve(key)

    def _note_if_undefined(self, key: str, value: Any) -> None:
        if isinstance(value, float) and math.isnan(value):
            self._notes.append(
                f"metric {key!r} is undefined (NaN): its reference or denominator is zero, infinite or "
                "undefined while the answer is not"
            )

    @property
    def pending(self) -> tuple[str, ...]:
        """Figures not computed yet."""
        return tuple(self._pending)

    def __getitem__(self, key: str) -> float:
        self._resolve(key)
        return super().__getitem__(key)  # type: ignore[no-any-return]

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending.pop(key, None)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._pending.pop(key, None)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def items(self):  # type: ignore[no-untyped-def, override]
        self._resolve_all()
        return super().items()

    def values(self):  # type: ignore[no-untyped-def, override]
        self._resolve_all()
        return super().values()

    def copy(self) -> dict[str, float]:  # type: ignore[override]
        return dict(self.items())

    def __eq__(self, other: object) -> bool:
        self._resolve_all()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._resolve_all()
        return super().__repr__()

    def __or__(self, other: Any) -> Metrics:  # type: ignore[override]
        """These figures and ``other``'s (which may be callables too), still pending: ``super().metrics(p) | {...}``."""
        return Metrics({**dict(dict.items(self)), **dict(other)}, self._notes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.copy(),))


class _ComputedOnRead:
    """A dataclass field that may be given a zero-argument callable: called (under ``torch.no_grad()``) at the
    first read, then kept. ``Result.condition`` is one, so an estimate that costs a factorisation (the exact
    condition number of a large matrix) is paid only by a caller who reads it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:  # the class attribute: the dataclass reads the field's default here
            return None
        value = obj.__dict__.get(self._slot)
        if callable(value):
            with torch.no_grad():
                value = obj.__dict__[self._slot] = value()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._slot] = value


@dataclass
class Result:
    """The outcome of one :func:`gdla.solve` run.

    ``solution`` is the problem's answer (the inverse; ``(U, S, V)`` for ``svd``; the learned
    operator for ``sparse``; the band parameters for ``toeplitz``) and ``params`` the raw
    parameter tensors. ``losses[i]`` is the loss after ``i`` steps (``losses[0]`` at the start, ``losses[-1]`` at
    the returned answer: ``steps + 1`` entries), a read-only, list-like
    :class:`~gdla.stopping.Losses` over packed float64 (8 bytes a step); a list given here becomes one.
    """

    solution: Any
    params: dict[str, torch.Tensor]
    losses: Losses
    steps: int
    stop_reason: str
    seconds: float
    backend: str
    #: Final figures (:class:`Metrics`): ``residual``, ``error`` and the problem's own; the costly ones are
    #: computed when first read.
    metrics: dict[str, float]
    problem: str = ""
    optimizer: str = ""
    message: str = ""
    #: A condition-number estimate of the problem (``Problem.condition_estimate()``), computed when first read.
    condition: float | None = _ComputedOnRead()  # type: ignore[assignment]
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Time before the first step (conversions, the starting point, the optimizer's own set-up
    #: such as curvature estimates); ``seconds`` is the iteration loop alone.
    setup_seconds: float = 0.0
    #: Time after the last step: gathering the answer and the cheap metrics (the costly ones, and the condition
    #: estimate, are computed when first read).
    summary_seconds: float = 0.0
    #: For a batched problem that declares ``member_residuals``: one :data:`BATCH_STATUS` code per member
    #: (shape: the batch), and each member's final relative residual.
    batch_status: torch.Tensor | None = None
    member_residuals: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.losses, Losses):
            self.losses = Losses(self.losses)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_condition"] = self.condition  # computed first: a pending estimate is a closure, which cannot pickle
        return state

    @property
    def converged(self) -> bool:
        return self.stop_reason == "converged"

    @property
    def method(self) -> str:
        """The optimizer, and for one that delegates (``auto``) the method it picked: ``"auto → cg"``."""
        picked = self.settings.get("optimizer.method")
        return f"{self.optimizer} → {picked}" if picked else self.optimizer

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: tensors become nested lists, non-finite floats become ``None``."""
        return {
            "problem": self.problem,
            "optimizer": self.optimizer,
            "solution": _plain(self.solution),
            "params": {key: _plain(value) for key, value in self.params.items()},
            "losses": [_plain(x) for x in self.losses],
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "message": self.message,
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "summary_seconds": self.summary_seconds,
            "batch_status": _plain(self.batch_status),
            "member_residuals": _plain(self.member_residuals),
            "backend": self.backend,
            "metrics": {key: _plain(value) for key, value in self.metrics.items()},
            "condition": _plain(self.condition),
            "settings": _plain(self.settings),
            "warnings": list(self.warnings),
        }

    def __repr__(self) -> str:
        """Two lines, never the loss history or the tensors: problem, method, stop, steps, seconds, final loss,
        metrics (the dataclass's own repr of a 10,000-step run printed 232,021 characters)."""
        last = f"{self.losses[-1]:.3g}" if self.losses else "n/a"
        metrics = ", ".join(f"{key!r}: {_short(value)}" for key, value in self.metrics.items())
        warned = f", warnings={len(self.warnings)}" if self.warnings else ""
        return (
            f"Result(problem={self.problem!r}, method={self.method!r}, stop_reason={self.stop_reason!r}, "
            f"steps={self.steps}, seconds={self.seconds:.3g},\n       final_loss={last}, metrics={{{metrics}}}, "
            f"losses=<{len(self.losses)} values>{warned})"
        )

    def summary(self) -> str:
        """A few readable lines for people."""
        metrics = ", ".join(f"{key} {value:.3e}" for key, value in self.metrics.items())
        last = f"{self.losses[-1]:.3e}" if self.losses else "n/a"
        lines = [
            f"{self.problem} with {self.method} ({self.backend}): {self.stop_reason} after {self.steps} steps "
            f"in {self.seconds:.3f} s (set-up {self.setup_seconds:.3f} s)",
            f"  {self.message}",
            f"  final loss {last}; {metrics}",
        ]
        if "optimizer.reason" in self.settings:
            lines.append(
                f"  {self.optimizer} chose {self.settings['optimizer.method']}: {self.settings['optimizer.reason']}"
            )
        if self.condition is not None:
            lines.append(f"  condition number estimate {self.condition:.3e}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:  # a sparse answer stays sparse
        coo = value.detach().cpu().to_sparse_coo().coalesce()
        return {"shape": list(coo.shape), "indices": _plain(coo.indices()), "values": _plain(coo.values())}
    if isinstance(value, torch.Tensor):
        return _plain(value.detach().cpu().tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def _short(value: Any) -> str:
    """A metric as ``repr`` shows it: a float in 3 significant digits, anything else by its own ``repr``."""
    return f"{value:.3g}" if isinstance(value, float) else repr(value)
