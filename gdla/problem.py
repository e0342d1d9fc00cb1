"""The interface every problem plugin implements.

A problem owns its data (tensors), knows how to start (``init_params``), what to minimise
(``loss``), what its answer is (``solution``) and how good an answer is (``residual``, ``error``
against the exact ``torch.linalg`` reference). The solve loop knows nothing else about it.

The base class records the arguments each problem's constructor was called with, so :meth:`Problem.to`,
:meth:`Problem.batch_slice` and :meth:`Problem.rebuild` derive from that record (as ``linear_operator``'s).
"""

from __future__ import annotations

import abc
import copy
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from gdla.errors import InputError
from gdla.problem_repr import problem_repr

if TYPE_CHECKING:
    from gdla.capabilities import (
        InverseMSE,
        LinearLeastSquares,
        MaskedOperatorLoss,
        MatrixInverse,
        SingularValueDecomposition,
        SumOfSquares,
        SvdPenaltyLoss,
    )
    from gdla.panels import DemoPanel
    from gdla.scaling import Normalization

__all__ = ["Params", "Problem"]

#: Named parameter tensors that the optimizer updates in place.
Params = dict[str, torch.Tensor]

#: Instance attributes holding the recorded constructor arguments (``None``: not recorded) and their
#: tensors' version counters after construction.
_ARGUMENTS, _VERSIONS = "_constructor_arguments", "_constructor_versions"


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` wrapped so that the outermost constructor call records its arguments on the instance.

    A signature with ``*args`` or ``**kwargs`` records nothing (its arguments cannot be told apart),
    and neither do the ``super().__init__`` calls it makes: the problem keeps today's hand-written path.
    """
    signature = inspect.signature(init)
    recordable = all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values())

    @functools.wraps(init)
    def __init__(self: Problem, *args: Any, **kwargs: Any) -> None:
        if _ARGUMENTS in self.__dict__:  # an inner super().__init__ call: the outermost call's record stands
            init(self, *args, **kwargs)
            return
        arguments = None
        if recordable:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                pass  # the call itself raises it, with Python's message
            else:
                bound.apply_defaults()
                arguments = dict(list(bound.arguments.items())[1:])  # without self
        self.__dict__[_ARGUMENTS] = arguments
        init(self, *args, **kwargs)
        tensors = (arguments or {}).items()  # their versions now: gdla.plan rebuilds if one changes before a solve
        self.__dict__[_VERSIONS] = {k: v._version for k, v in tensors if torch.is_tensor(v) and not v.is_inference()}

    __init__._gdla_recording = True  # type: ignore[attr-defined]
    __init__._gdla_signature = signature  # type: ignore[attr-defined]
    return __init__


def _converted(value: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A constructor argument as :meth:`Problem.to` hands it on: floating data in ``dtype`` on ``device``.

    Floating tensors (and NumPy arrays or nested lists of floats, which constructors accept as
    matrices) are converted, other tensors moved; anything else is kept.
    """
    if isinstance(value, (np.ndarray, list)):
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            return value
        if not tensor.is_floating_point():
            return value
        value = tensor
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype if value.is_floating_point() else value.dtype, device=device)
    return value


def _leading_shape(value: Any) -> tuple[int, ...]:
    """The shape of a tensor, NumPy array or nested list (``()`` for anything else, a ragged list included)."""
    try:
        return tuple(np.shape(value)) if isinstance(value, list) else tuple(getattr(value, "shape", ()))
    except ValueError:
        return ()


class Problem(abc.ABC):
    """Base class of a problem plugin.

    Subclasses set ``name`` (the registry name) and ``summary`` (one line), store their data as
    tensors and implement the abstract methods. ``fused`` says whether ``loss_and_grad`` has a
    fused-kernel path (``backend="fused"``).
    """

    __repr__ = problem_repr  # one line: the class, its name, its arguments' shapes, dtype and device
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    fused: ClassVar[bool] = False
    #: Constructor arguments that carry a batch of independent problems in their leading dimension,
    #: each with the number of trailing dimensions one member has (``{"A": 2}``: ``A`` of shape
    #: ``(..., m, n)``). Declaring it derives :meth:`batch_size` and :meth:`batch_slice`.
    batched: ClassVar[dict[str, int]] = {}
    #: Whether the loss is a quadratic function of the parameters (exact line search and
    #: conjugate gradient rely on it). ``None``: unknown. Instances may override it with a property.
    quadratic: ClassVar[bool | None] = None
    #: The options ``example``/``from_matrix`` and the constructor accept (name -> :class:`gdla.options.Option`):
    #: shown by ``gdla plugins --json`` and checked by ``gdla solve -p``; empty: not declared.
    options: ClassVar[dict[str, Any]] = {}
    #: Curvature pairs a quasi-Newton method should keep on this loss (``None``: the method's default);
    #: a hint for losses whose coupling only a long memory resolves.
    quasi_newton_memory: ClassVar[int | None] = None
    #: Whether :meth:`from_matrix` takes a torch sparse tensor. ``gdla solve NAME --matrix FILE`` then
    #: hands a coordinate-format ``.mtx`` (or a sparse tensor saved as ``.pt``) over as a coalesced
    #: sparse COO tensor (``bool`` values for a Matrix Market ``pattern`` file) instead of densifying
    #: it; problems that leave it ``False`` get the dense matrix, as before.
    accepts_sparse_matrix: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the subclass's own ``__init__`` so that the outermost call records its arguments."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_gdla_recording", False):
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def example(cls, size: int | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
        """Build the problem on its seed notebook's scenario (``size`` overrides its dimension)."""

    @classmethod
    def demo(cls, quick: bool = False) -> list[DemoPanel]:
        """What ``gdla demo`` shows for this problem: by default its :meth:`example` solved with ``auto``.

        Override to add headline panels (a notebook's comparison, methods side by side); ``quick``
        asks for a smoke-test-sized version.
        """
        from gdla.panels import DemoPanel, DemoRun

        return [DemoPanel(cls.name, [DemoRun("", cls.example())])]

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int | None:
        """Memory that ``example(size, dtype=dtype, **options)`` and a solve of it need, or ``None`` if unknown.

        ``gdla solve NAME --size N`` checks it against the memory available before building anything.
        """
        return None

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, **options: Any) -> Problem:
        """Build the problem from one user matrix (the command line's ``--matrix``).

        ``matrix`` is dense unless the class sets :attr:`accepts_sparse_matrix`.
        """
        return cls(matrix, **options)  # type: ignore[call-arg]

    def _data(self) -> dict[str, torch.Tensor]:
        """The problem's floating-point tensor attributes (what the default :meth:`to` converts)."""
        return {
            key: value
            for key, value in vars(self).items()
            if isinstance(value, torch.Tensor) and value.is_floating_point()
        }

    def _first_data(self) -> torch.Tensor | None:
        """The first floating-point tensor attribute (what :attr:`dtype` and :attr:`device` read), or ``None``."""
        return next(
            (value for value in vars(self).values() if isinstance(value, torch.Tensor) and value.is_floating_point()),
            None,
        )

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the problem's data (default: that of its first floating tensor attribute)."""
        data = self._first_data()
        return data.dtype if data is not None else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """Device of the problem's data (default: that of its first floating tensor attribute)."""
        data = self._first_data()
        return data.device if data is not None else torch.device("cpu")

    def rebuild(self, **changes: Any) -> Problem:
        """The problem built again from its recorded constructor arguments, ``changes`` replacing some.

        What :meth:`to` and :meth:`batch_slice` are made of; :meth:`normalized` builds its scaled
        copy with it too. Everything the constructor derives (analyses, caches) is derived afresh.

        Raises:
            NotImplementedError: the constructor takes ``*args``/``**kwargs``, so nothing was recorded.
            InputError: a name in ``changes`` that the constructor does not take.
        """
        arguments = self.__dict__.get(_ARGUMENTS)
        if arguments is None:
            raise NotImplementedError(
                f"problem {self.name!r}: rebuild() needs the constructor's arguments, which "
                f"{type(self).__name__}.__init__ (with *args or **kwargs) does not record; override the "
                "method that called it"
            )
        unknown = sorted(set(changes) - set(arguments))
        if unknown:
            raise InputError(
                f"changes: expected arguments of {type(self).__name__}.__init__ ({', '.join(arguments)}), "
                f"received {', '.join(unknown)}"
            )
        merged = {**arguments, **changes}
        init = type(self).__init__  # the recording wrapper keeps its signature: computed once per class
        parameters = list((getattr(init, "_gdla_signature", None) or inspect.signature(init)).parameters.values())[1:]
        args = [merged[p.name] for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        kwargs = {p.name: merged[p.name] for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
        return type(self)(*args, **kwargs)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Problem:
        """Return the problem with its data converted (``self`` if nothing changes).

        Rebuilt from the recorded constructor arguments with floating data converted to ``dtype`` on
        ``device`` and other tensors moved, so derived data is computed again in the new dtype. A
        problem whose constructor records nothing (``*args``), or whose rebuild does not land on the
        target, gets a shallow copy with every tensor attribute converted (integer and boolean ones
        moved only).
        """
        target = self.conversion(dtype, device)
        if target is None:
            return self
        new_dtype, new_device = target
        arguments = self.__dict__.get(_ARGUMENTS)
        if arguments is not None:
            converted = {key: _converted(value, new_dtype, new_device) for key, value in arguments.items()}
            rebuilt = self.rebuild(**converted)
            if (rebuilt.dtype, rebuilt.device) == (new_dtype, new_device):
                return rebuilt
        moved = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                kind = new_dtype if value.is_floating_point() else value.dtype
                setattr(moved, key, value.to(dtype=kind, device=new_device))
        return moved

    def conversion(
        self, dtype: torch.dtype | None, device: torch.device | str | None
    ) -> tuple[torch.dtype, torch.device] | None:
        """The ``(dtype, device)`` that ``to(dtype, device)`` converts to, or ``None`` if nothing changes."""
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        return None if (dtype == self.dtype and device == self.device) else (dtype, device)

    # -- optimisation -------------------------------------------------------------------------
    @abc.abstractmethod
    def init_params(self, generator: torch.Generator) -> Params:
        """Return fresh starting parameters drawn from the CPU ``generator``, on ``self.device``."""

    @abc.abstractmethod
    def loss(self, params: Params) -> torch.Tensor:
        """Differentiable scalar objective: the pure-PyTorch (autograd) reference."""

    def loss_and_grad(self, params: Params, backend: str = "autograd") -> tuple[torch.Tensor, Params]:
        """Return ``(loss, gradients)`` at ``params`` without changing them.

        The default differentiates :meth:`loss` with autograd. Problems with ``fused = True``
        override it to call the fused ops when ``backend == "fused"``.
        """
        with torch.enable_grad():
            leaves = {key: value.detach().requires_grad_(True) for key, value in params.items()}
            loss = self.loss(leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        out = {
            # contiguous: a transposed-view gradient breaks optimizers that flatten with .view()
            key: torch.zeros_like(value) if grad is None else grad.contiguous()
            for (key, value), grad in zip(leaves.items(), grads, strict=True)
        }
        return loss.detach(), out

    # -- declared capabilities (see gdla.capabilities) ------------------------------------------
    def least_squares(self) -> LinearLeastSquares | None:
        """The loss's linear least-squares form ``r = J x − b`` in one parameter tensor, or ``None`` (unlocks cg)."""
        return None

    def sum_of_squares(self) -> SumOfSquares | None:
        """The loss as a function of a differentiable residual vector, or ``None`` (Gauss-Newton methods)."""
        least_squares = self.least_squares()
        if least_squares is None:
            return None
        from gdla.capabilities import SumOfSquares

        key, form = least_squares.key, least_squares
        return SumOfSquares(residuals=lambda params: form.residual(params[key]), loss_of=form.loss_of)

    def matrix_inverse(self) -> MatrixInverse | None:
        """The matrix whose (pseudo-)inverse is the answer, or ``None`` (unlocks Newton-Schulz)."""
        return None

    def singular_value_decomposition(self) -> SingularValueDecomposition | None:
        """The matrix whose leading singular triples are the answer, or ``None`` (unlocks ``riemannian-svd``)."""
        return None

    def sparse_storage(self) -> tuple[tuple[int, ...], int] | None:
        """``(shape, nnz)`` of the operator when the problem stores it sparse (only its ``nnz`` entries), or ``None``.

        Memory checks quote it: a method that would form dense matrices from such a problem is
        refused before it starts (see :meth:`gdla.Optimizer.estimated_bytes`).
        """
        return None

    def fused_reason(self) -> str | None:
        """Why :meth:`loss_and_grad` has no fused-kernel path, or ``None`` if it has one (default: from ``fused``)."""
        return None if self.fused else f"problem {self.name!r} has no fused kernel"

    def normalized(self) -> Normalization | None:
        """The same problem in normalised units (data scaled by an exact power of two) and the map back.

        :func:`gdla.solve` runs every method on it (a method behaves the same on ``A`` and ``2ᵏ·A``); the
        default derives it from a declared :meth:`least_squares` form (:mod:`gdla.declared_units`), else ``None``.
        """
        from gdla.declared_units import least_squares_units

        return least_squares_units(self, Problem)

    def batch_size(self) -> int | None:
        """Length of the leading batch dimension of independent problems, or ``None`` if not batched.

        Derived from :attr:`batched`: the leading length of the first declared argument that has
        more dimensions than one member. Declaring it lets ``gdla.solve(..., distributed=True)``
        shard the batch.
        """
        arguments = self.__dict__.get(_ARGUMENTS) or {}
        for key, member_dims in self.batched.items():
            shape = _leading_shape(arguments.get(key))
            if len(shape) > member_dims:
                return int(shape[0])
        return None

    def batch_slice(self, start: int, stop: int) -> Problem:
        """The sub-problem of batch members ``start:stop``: rebuilt with the :attr:`batched` arguments sliced."""
        if self.batch_size() is None:
            raise NotImplementedError(f"problem {self.name!r} is not batched: it does not implement batch_slice()")
        arguments = self.__dict__[_ARGUMENTS]
        return self.rebuild(
            **{
                key: arguments[key][start:stop]
                for key, member_dims in self.batched.items()
                if len(_leading_shape(arguments.get(key))) > member_dims
            }
        )

    def fused_loss(self) -> InverseMSE | SvdPenaltyLoss | MaskedOperatorLoss | None:
        """The fused-kernel family that computes the loss exactly (e.g. :class:`~gdla.InverseMSE`), or ``None``.

        Optimizers with whole-run kernels for that family may then run many steps per call.
        """
        return None

    def needs_projection(self) -> bool:
        """Whether :meth:`project` may change the parameters (the loop may skip it, and run steps in bulk, if not)."""
        return type(self).project is not Problem.project

    def update_masks(self) -> Params:
        """0/1 masks of parameters whose gradient is zero outside the mask (default: none).

        A fused optimizer step (``gdla.ops.masked_update_``) may then update such a parameter
        as ``U ← U − lr·(Ω ⊙ G)`` in one pass over memory.
        """
        return {}

    def project(self, params: Params) -> None:
        """Map ``params`` back onto the feasible set in place after each step (default: nothing), e.g. a retraction.
        """
        return None

    # -- answers ------------------------------------------------------------------------------
    @abc.abstractmethod
    def solution(self, params: Params) -> Any:
        """The main answer held by ``params`` (a tensor or a tuple of tensors)."""

    @abc.abstractmethod
    def residual(self, params: Params) -> torch.Tensor:
        """Relative residual of the problem's defining equation (worst over a batch): the stop test."""

    def reference_params(self) -> Params | None:
        """Parameters that hold the exact answer (:meth:`reference`), or ``None`` where none exist.

        :class:`gdla.testing.ProblemContract` checks that the residual vanishes and the loss is
        minimal there.
        """
        return None

    def member_residuals(self, params: Params) -> torch.Tensor | None:
        """The relative residual of each independent member of a batched problem (shape: the batch), or ``None``.

        Declaring it gives ``Result.batch_status``, one verdict per member, so one bad matrix does not
        hide the others.
        """
        return None

    def residual_kind(self) -> str:
        """What :meth:`residual` measures: ``"equation"`` (the defining equation, default) or
        ``"normal-equations"`` (its least-squares optimality condition, where the equation has no solution)."""
        return "equation"

    @abc.abstractmethod
    def reference(self) -> Any:
        """The exact answer computed by ``torch.linalg`` (or a closed form)."""

    @abc.abstractmethod
    def error(self, params: Params) -> torch.Tensor:
        """Relative error of :meth:`solution` against :meth:`reference` (worst over a batch)."""

    def metrics(self, params: Params) -> dict[str, float]:
        """Final figures reported in ``Result.metrics``; always ``residual`` and ``error``.

        Returns a :class:`~gdla.result.Metrics`, which computes a figure given as a zero-argument
        callable only when it is read, so a solve does not pay for a reference answer nobody looks
        at. Overrides add their own, deferred or not: ``super().metrics(params) | {"fit": lambda: ...}``;
        a plain ``dict`` of floats works too.
        """
        from gdla.result import Metrics

        return Metrics({"residual": lambda: self.residual(params), "error": lambda: self.error(params)})

    def condition_estimate(self) -> float | None:
        """Estimated condition number of the problem's operator, or ``None`` if not meaningful."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about this instance (shapes, options) for ``Result.to_dict``."""
        return {"name": self.name}
