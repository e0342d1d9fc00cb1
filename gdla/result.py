"""What :func:`gdla.solve` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["BATCH_STATUS", "STOP_REASONS", "Result"]

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


@dataclass
class Result:
    """The outcome of one :func:`gdla.solve` run.

    ``solution`` is the problem's answer (the inverse; ``(U, S, V)`` for ``svd``; the learned
    operator for ``sparse``; the band parameters for ``toeplitz``) and ``params`` the raw
    parameter tensors. ``losses[i]`` is the loss evaluated at step ``i + 1``.
    """

    solution: Any
    params: dict[str, torch.Tensor]
    losses: list[float]
    steps: int
    stop_reason: str
    seconds: float
    backend: str
    metrics: dict[str, float]
    problem: str = ""
    optimizer: str = ""
    message: str = ""
    condition: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Time before the first step (conversions, the starting point, the optimizer's own set-up
    #: such as curvature estimates); ``seconds`` is the iteration loop alone.
    setup_seconds: float = 0.0
    #: Time after the last step: gathering, metrics and the condition estimate.
    summary_seconds: float = 0.0
    #: For a batched problem that declares ``member_residuals``: one :data:`BATCH_STATUS` code per member
    #: (shape: the batch), and each member's final relative residual.
    batch_status: torch.Tensor | None = None
    member_residuals: torch.Tensor | None = None

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
