"""Backend resolution: ``autograd`` / ``fused`` / ``auto``, the one-time fallback warning and
``GDLA_DISABLE_EXTENSION``. The compiled extension's presence is simulated, so these tests give
the same answers whether or not ``gdla._C`` was built."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import gdla
from gdla import backend
from gdla import registry as registry_module
from gdla.errors import BackendError, BackendWarning, InputError

#: The cached function itself; tests replace the module attribute to simulate the extension.
REAL_EXTENSION_STATUS = backend.extension_status


class Square(gdla.Problem):
    r"""Find ``x = c``: :math:`L(x) = \tfrac12 \|x - c\|^2`; records the backend it is asked for."""

    name = "square-fit"
    summary = "x = c"
    fused = False

    def __init__(self, c: torch.Tensor | None = None) -> None:  # shape: (n,)
        self.c = torch.arange(1.0, 4.0, dtype=torch.float64) if c is None else c
        self.backends: list[str] = []

    @classmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Square:
        return cls(torch.arange(1.0, (size or 3) + 1.0, dtype=dtype))

    dtype = property(lambda self: self.c.dtype)
    device = property(lambda self: self.c.device)

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> Square:
        return self

    def init_params(self, generator: torch.Generator) -> gdla.Params:
        return {"x": torch.zeros_like(self.c)}

    def loss(self, params: gdla.Params) -> torch.Tensor:
        return ((params["x"] - self.c) ** 2).sum() / 2

    def loss_and_grad(self, params: gdla.Params, backend: str = "autograd") -> tuple[torch.Tensor, gdla.Params]:
        self.backends.append(backend)
        return super().loss_and_grad(params, "autograd")

    def solution(self, params: gdla.Params) -> torch.Tensor:
        return params["x"]

    def residual(self, params: gdla.Params) -> torch.Tensor:
        return torch.linalg.norm(params["x"] - self.c) / torch.linalg.norm(self.c)

    def reference(self) -> torch.Tensor:
        return self.c

    def error(self, params: gdla.Params) -> torch.Tensor:
        return self.residual(params)


class FusedSquare(Square):
    name = "fused-square-fit"
    fused = True


class GD(gdla.GradientOptimizer):
    name = "gd"
    summary = "gradient descent"
    default_lr = 0.5

    def build(self, tensors: list[torch.Tensor], lr: float | None, **options: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(tensors, lr=lr)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty registry holding ``gd``, and the backend caches cleared before and after."""
    fresh = registry_module.Registry(entry_points=lambda: [])
    monkeypatch.setattr(registry_module, "registry", fresh)
    plugin = type("P", (), {"register_optimizers": staticmethod(gdla.hookimpl(lambda register: register(GD)))})
    fresh.register_plugin(plugin, name="test-backend")
    monkeypatch.delenv("GDLA_DISABLE_EXTENSION", raising=False)
    REAL_EXTENSION_STATUS.cache_clear()
    backend._warn_fallback.cache_clear()
    yield
    REAL_EXTENSION_STATUS.cache_clear()  # later tests see the real status again
    backend._warn_fallback.cache_clear()


def simulate_extension(monkeypatch: pytest.MonkeyPatch, loaded: bool, detail: str = "simulated") -> None:
    monkeypatch.setattr(backend, "extension_status", lambda: (loaded, detail))


def test_autograd_is_always_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    for loaded in (True, False):
        simulate_extension(monkeypatch, loaded)
        assert backend.resolve_backend("autograd", Square()) == "autograd"
        assert backend.resolve_backend("autograd", FusedSquare()) == "autograd"


def test_problem_without_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, True)
    assert backend.resolve_backend("auto", Square()) == "autograd"  # silently: nothing to fall back from
    expected = "'fused' was requested for problem 'square-fit', but part of the run has no fused path: problem"
    with pytest.raises(BackendError, match=expected + " 'square-fit' has no fused kernel"):
        backend.resolve_backend("fused", Square())


def test_extension_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, True)
    assert backend.resolve_backend("auto", FusedSquare()) == "fused"
    assert backend.resolve_backend("fused", FusedSquare()) == "fused"


def test_extension_missing_fused_raises_with_reason_and_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, False, "ImportError: undefined symbol xyz")
    with pytest.raises(BackendError) as info:
        backend.resolve_backend("fused", FusedSquare())
    text = str(info.value)
    assert "needs the compiled extension gdla._C" in text
    assert "ImportError: undefined symbol xyz" in text
    assert "pip install --no-build-isolation -e ." in text
    assert isinstance(info.value, RuntimeError)


def test_auto_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, False, "no module gdla._C")
    with pytest.warns(BackendWarning, match=r"fell back to autograd: .*\(no module gdla._C\); build it with") as record:
        assert backend.resolve_backend("auto", FusedSquare()) == "autograd"
    assert len(record) == 1
    # filterwarnings=error: a second warning for the same reason would fail here
    assert backend.resolve_backend("auto", FusedSquare()) == "autograd"
    assert backend.resolve_backend("auto", FusedSquare()) == "autograd"


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(InputError, match="backend: expected one of 'auto', 'autograd', 'fused', received 'cuda'"):
        backend.resolve_backend("cuda", Square())


def test_disable_extension_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDLA_DISABLE_EXTENSION", "1")
    assert backend.extension_status() == (False, "disabled by GDLA_DISABLE_EXTENSION")
    with pytest.raises(BackendError, match="disabled by GDLA_DISABLE_EXTENSION"):
        backend.resolve_backend("fused", FusedSquare())
    with pytest.warns(BackendWarning, match="disabled by GDLA_DISABLE_EXTENSION"):
        assert backend.resolve_backend("auto", FusedSquare()) == "autograd"


def test_disable_extension_zero_means_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDLA_DISABLE_EXTENSION", "0")
    loaded, detail = backend.extension_status()
    assert detail != "disabled by GDLA_DISABLE_EXTENSION"


def test_extension_status_matches_the_import() -> None:
    loaded, detail = backend.extension_status()
    try:
        importlib.import_module("gdla._C")
        importlib.import_module("gdla.ops")
    except Exception as exc:  # the status must report the same failure
        assert not loaded
        assert type(exc).__name__ in detail
    else:
        assert loaded and detail.startswith("loaded from ")
    assert gdla.extension_status() == (loaded, detail), "the package exports the same function"


# -- through solve -------------------------------------------------------------------------------
def test_solve_passes_the_resolved_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, True)
    problem = FusedSquare()
    result = gdla.solve(problem, optimizer="gd", max_steps=3, tol=0)
    assert result.backend == "fused"
    assert problem.backends == ["fused"] * 3
    problem.backends.clear()
    assert gdla.solve(problem, optimizer="gd", max_steps=2, tol=0, backend="autograd").backend == "autograd"
    assert problem.backends == ["autograd"] * 2


def test_solve_fused_on_a_problem_without_it() -> None:
    with pytest.raises(
        BackendError, match="problem 'square-fit' has no fused kernel; use backend='autograd' or 'auto'"
    ):
        gdla.solve(Square(), optimizer="gd", backend="fused")


def test_solve_auto_fallback_still_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_extension(monkeypatch, False, "not built")
    problem = FusedSquare()
    with pytest.warns(BackendWarning, match="not built"):
        result = gdla.solve(problem, optimizer="gd", tol=1e-12)
    assert result.backend == "autograd" and result.converged
    torch.testing.assert_close(result.solution, problem.c, rtol=1e-12, atol=0)
    assert set(problem.backends) == {"autograd"}
