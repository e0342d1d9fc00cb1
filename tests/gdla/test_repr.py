"""``repr`` of a result and of a problem: a few informative lines, never the loss history or the data."""

from __future__ import annotations

import torch

import gdla
from gdla.problem_repr import problem_repr
from gdla.result import Result
from gdla_plugins.problems.inverse import InverseProblem
from gdla_plugins.problems.svd import SVDProblem


def test_a_long_run_prints_in_two_short_lines() -> None:
    result = gdla.solve("inverse", optimizer="momentum", max_steps=10_000, tol=0, seed=0)
    text = repr(result)
    assert len(result.losses) == 10_001
    lines = text.splitlines()
    assert len(lines) == 2 and all(len(line) <= 120 for line in lines), text
    assert lines[0] == (
        f"Result(problem='inverse', method='momentum', stop_reason='max_steps', steps=10000, "
        f"seconds={result.seconds:.3g},"
    )
    residual, error = result.metrics["residual"], result.metrics["error"]
    assert lines[1] == (
        f"       final_loss={result.losses[-1]:.3g}, metrics={{'residual': {residual:.3g}, 'error': {error:.3g}}}, "
        "losses=<10001 values>)"
    )


def test_auto_and_warnings_are_shown() -> None:
    result = Result(
        solution=torch.zeros(2),
        params={},
        losses=[1.0, 0.5],
        steps=1,
        stop_reason="stalled",
        seconds=0.25,
        backend="autograd",
        metrics={"residual": 0.125, "note": "text"},
        problem="p",
        optimizer="auto",
        settings={"optimizer.method": "cg"},
        warnings=["w1", "w2"],
    )
    assert repr(result) == (
        "Result(problem='p', method='auto → cg', stop_reason='stalled', steps=1, seconds=0.25,\n"
        "       final_loss=0.5, metrics={'residual': 0.125, 'note': 'text'}, losses=<2 values>, warnings=2)"
    )


def test_a_problem_prints_its_name_shapes_options_dtype_and_device() -> None:
    assert problem_repr(InverseProblem.example()) == (
        "InverseProblem(name='inverse', A=4×4, pseudo=False, init='random', dtype=float64, device=cpu)"
    )
    M = torch.ones(300, 200, dtype=torch.float32)
    assert problem_repr(SVDProblem(M, rank=5)).startswith("SVDProblem(name='svd', M=300×200, rank=5, ")
    assert problem_repr(SVDProblem(M, rank=5)).endswith(", dtype=float32, device=cpu)")
    batch = InverseProblem(torch.eye(3, dtype=torch.float64).expand(8, 3, 3).clone())
    assert problem_repr(batch).endswith("A=8×3×3, pseudo=False, init='random', dtype=float64, device=cpu, batch=8)")


class _Unrecorded(InverseProblem):
    """A problem whose constructor takes ``*args`` records nothing: its tensor attributes are shown."""

    name = "unrecorded"

    def __init__(self, *args: torch.Tensor) -> None:
        super().__init__(*args)


class _BrokenDevice(InverseProblem):
    name = "broken-device"

    @property
    def device(self) -> torch.device:
        raise RuntimeError("broken property")


def test_unrecorded_and_broken_problems_still_print() -> None:
    text = problem_repr(_Unrecorded(torch.eye(2, dtype=torch.float64)))
    assert text.startswith("_Unrecorded(name='unrecorded', A=2×2") and "dtype=float64, device=cpu" in text
    assert problem_repr(_BrokenDevice(torch.eye(2))).endswith("…)")


def test_long_and_many_arguments_are_shortened() -> None:
    class Many(InverseProblem):
        name = "many"

        def __init__(
            self,
            A: torch.Tensor,
            a: str = "x" * 100,
            b: int = 1,
            c: int = 2,
            d: int = 3,
            e: int = 4,
            f: int = 5,
            g: int = 6,
            h: int = 7,
            i: int = 8,
        ) -> None:
            super().__init__(A)

    text = problem_repr(Many(torch.eye(2)))
    assert "a='" + "x" * 38 + "…" in text and "g=6, …, dtype=" in text and "h=7" not in text
    assert len(text) < 200
