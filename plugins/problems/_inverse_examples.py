"""The ``inverse`` problem's factories and demo scenarios, apart from its math.

:class:`InverseExamples` is mixed into :class:`~gdla_plugins.problems.inverse.InverseProblem`:
seed notebook 000's matrices (:meth:`~InverseExamples.example`), a benign test matrix
(:meth:`~InverseExamples.well_conditioned`), the memory estimate and the ``gdla demo`` panels.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gdla.panels import DemoPanel, DemoRun
from gdla.validation import as_dtype, check_choice, check_int
from gdla_plugins.problems._common import cpu_generator

__all__ = ["EXAMPLE_KINDS", "EXAMPLE_SEED", "InverseExamples"]

EXAMPLE_KINDS = ("random", "diagonal")
#: The seed notebook drew its matrix right after ``torch.manual_seed(314)``.
EXAMPLE_SEED = 314


class InverseExamples:
    """The classmethods that build ``inverse`` problems (``cls`` is the problem class)."""

    @classmethod
    def example(
        cls,
        size: int | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        kind: str = "random",
        batch: int | None = None,
        **options: Any,
    ) -> Any:
        """Seed notebook 000's matrices: ``torch.rand(4, 4)`` after seeding 314, or ``diag(1, ..., n)``.

        Args:
            size: ``n`` (default 4).
            seed: added to 314, the notebook's seed (``seed=0`` reproduces its matrix exactly).
            dtype: dtype of the problem (the random matrix is drawn in float32, as the notebook did).
            kind: ``"random"`` or ``"diagonal"`` (the notebook's easy comparison case).
            batch: a batch of this many matrices (the first is the unbatched example); ``None``: one.
            **options: passed to the constructor (``side``, ``pseudo``, ``init``).
        """
        n = 4 if size is None else check_int(size, "size", minimum=1)
        seed = check_int(seed, "seed")
        check_choice(kind, "kind", EXAMPLE_KINDS)
        dtype = as_dtype(dtype) or torch.float64
        lead = () if batch is None else (check_int(batch, "batch", minimum=1),)
        if kind == "diagonal":
            A = torch.diag(torch.arange(1, n + 1, dtype=torch.float64)).expand(*lead, n, n)
        else:  # the first n·n draws of a batch are the unbatched example's
            A = torch.rand(*lead, n, n, generator=cpu_generator(EXAMPLE_SEED + seed))
        return cls(A.to(dtype), **options)  # type: ignore[call-arg]

    @classmethod
    def demo(cls, quick: bool = False) -> list[DemoPanel]:
        """Seed 000's comparison (momentum lr 0.9, μ 0.9: random 4×4 against ``diag(1..4)``), methods
        compared on ``torch.rand(64, 64)``, and the example solved with ``auto``."""
        seed = {"optimizer": "momentum", "lr": 0.9, "momentum": 0.9, "max_steps": 10_000}
        seed_runs = [
            # the notebook learns M with M @ A ≈ I, and its lr may be too bold for some matrices
            DemoRun(label, cls.example(kind=kind, side="left"), seed, quick_steps=1_000, row=f"inverse ({kind})",
                    halve_lr_on_divergence=True)
            for kind, label in (("random", "random 4×4"), ("diagonal", "diag(1, 2, 3, 4)"))
        ]
        rand = cls(torch.rand(64, 64, generator=cpu_generator(0), dtype=torch.float64))  # type: ignore[call-arg]
        method_runs = [
            DemoRun(method, rand, {"optimizer": method, "max_steps": 500}, quick_steps=150,
                    row="inverse (rand 64×64)", plot_residual=True)
            for method in ("newton-schulz", "cg", "heavy-ball", "adam", "momentum")
        ]
        return [
            DemoPanel("seed 000: momentum 0.9, lr 0.9: random vs diagonal matrix", seed_runs, headline=True),
            DemoPanel("inverse of torch.rand(64, 64): methods compared", method_runs, headline=True,
                      ylabel="relative residual", note=f"cond(A) ≈ {rand.condition_estimate():.2e}"),
            *super().demo(quick=quick),  # type: ignore[misc]
        ]

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """``A``, ``M``, the singular-value analysis and a solve's products: about 8 n² numbers."""
        return 8 * size * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def well_conditioned(
        cls,
        n: int,
        *,
        batch: tuple[int, ...] = (),
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        **options: Any,
    ) -> Any:
        """A benign test matrix ``A = I + 0.2 G / √n`` with ``G`` standard normal.

        ``‖0.2 G / √n‖₂ ≈ 0.4``, so the singular values lie near ``[0.6, 1.4]`` and the condition
        number stays below about 5 for every ``n``.
        """
        n = check_int(n, "n", minimum=1)
        batch = tuple(check_int(b, "batch", minimum=1) for b in batch)
        dtype = as_dtype(dtype) or torch.float64
        noise = torch.randn(*batch, n, n, generator=cpu_generator(check_int(seed, "seed")), dtype=torch.float64)
        A = torch.eye(n, dtype=torch.float64) + 0.2 * noise / math.sqrt(n)
        return cls(A.to(dtype), **options)  # type: ignore[call-arg]
