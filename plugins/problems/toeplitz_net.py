r"""The ``toeplitz-net`` problem: seed 004's amortised banded Toeplitz approximation.

A small network :math:`f_\theta` (``n → hidden → tanh → hidden → tanh → 2b + 1``, the seed's
architecture) maps a row ``r`` (a Toeplitz matrix ``T(r)``, ``T[i, j] = r[n // 2 + j − i]``) to the
band parameters of its approximation. It is trained on ``N`` rows at once, vectorised over rows
and probes:

.. math:: L(\theta) = \frac1N \sum_{s=1}^N \big\|\big(T(r_s) - B(f_\theta(r_s))\big) W\big\|_F^2

with ``W`` the probe weights of :mod:`gdla_plugins.problems._toeplitz_common` (``"spectral"``:
``mean_k ‖(T − B) y_k‖² / ‖y_k‖²``; ``"frobenius"``: ``‖T − B‖_F² / n``). With the default
``normalize=True`` the network sees scaled rows, :math:`f_\theta(r) = c\,g_\theta(r / c)` for the
RMS entry ``c`` of the training rows. The best possible network reproduces each row's
least-squares bands, which is what the metrics compare against.
With first-order methods an amortised fit rarely reaches a tight ``tol`` (runs end ``stalled`` or
``max_steps``). The problem declares its loss a sum of squares with the Gram matrix ``J Jᵀ`` (the network's
tangent kernel, :meth:`ToeplitzNetProblem.sum_of_squares`), on which ``auto``'s Levenberg-Marquardt converges
to the reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

import gdla
from gdla.capabilities import SumOfSquares
from gdla.errors import InputError, ShapeError
from gdla.options import Option
from gdla.panels import DemoPanel, DemoRun
from gdla.problem import Params, Problem
from gdla.scaling import Normalization, check_representable, power_of_two_scale, scale_by_power_of_two
from gdla.validation import check_choice, check_int
from gdla_plugins.problems._toeplitz_common import (
    LOSSES,
    check_bandwidth,
    check_rows,
    default_bandwidth,
    design,
    lstsq_bands,
    normal_equations_gap,
    probe_weights,
    relative_error,
    resolve_probes,
    row_to_matrix,
    weigh,
)

__all__ = ["ToeplitzNetProblem"]

#: Seed 004's row length (``input_features``).
SEED_N = 11
#: Training and held-out rows in :meth:`ToeplitzNetProblem.example` (the seed used 3000 and 100;
#: fewer keep a CPU run to seconds).
EXAMPLE_TRAIN, EXAMPLE_TEST = 256, 64


class ToeplitzNetProblem(Problem):
    """Train an MLP that maps a row to the band parameters of its banded Toeplitz approximation.

    Args:
        rows: training rows, seed convention ``T[i, j] = row[n // 2 + j − i]``.  # shape: (N, n)
        bandwidth: half-bandwidth ``b`` of the output (``2b + 1`` values); default ``min(3, n − 1)``.
        hidden: width of the two hidden layers (the seed's 100).
        loss: ``"spectral"`` (the seed's) or ``"frobenius"``.
        test_rows: held-out rows for ``metrics()["test_error"]``.  # shape: (M, n)
        probes, num_probes, probe_seed: the spectral loss's probe vectors, as for ``toeplitz``.
        normalize: predict ``s · g_θ(r / s)`` with ``s`` the RMS entry of the training rows (a fixed
            scale, not a parameter). The map from a row to its least-squares bands is linear, so
            this loses nothing, and it keeps the tanh layers out of saturation for rows of any
            scale: on the example, Adam (lr 1e-2, 300 steps) reaches a relative error of about
            0.06 instead of 0.38. ``False`` is the seed's raw network.

    Parameters are the network's tensors as a flat dict (``"0.weight"``, ``"0.bias"``,
    ``"2.weight"``, ..., the names of ``nn.Sequential``), applied with
    ``torch.func.functional_call``, so every gdla optimizer can train them. They start at
    PyTorch's default ``nn.Linear`` initialisation, ``U(−1/√fan_in, 1/√fan_in)``, drawn from the
    generator.
    """

    name = "toeplitz-net"
    summary = "MLP that maps a row to its best banded Toeplitz approximation (seed 004, amortised)"
    options = {
        "bandwidth": Option(default=None, doc="half-bandwidth b of the predicted bands"),
        "hidden": Option(default=100, doc="width of the network's hidden layer"),
        "loss": Option(default="spectral", doc="'spectral' or 'frobenius'"),
        "num_probes": Option(default=100, doc="probe vectors of the spectral loss"),
        "probe_seed": Option(default=0, doc="seed of the default probes"),
        "normalize": Option(default=True, doc="scale each input row before the network"),
        "train": Option(default=256, doc="example only: training rows"),
        "test": Option(default=64, doc="example only: held-out rows"),
        "probes": Option(default=None, doc="Python API: the probe vectors (K, n)"),
        "test_rows": Option(default=None, doc="Python API: held-out rows"),
    }
    fused = False
    #: The loss is not quadratic in the network's parameters (read by solvers such as ``cg``).
    quadratic = False

    def __init__(
        self,
        rows: Any,  # shape: (N, n)
        *,
        bandwidth: int | None = None,
        hidden: int = 100,
        loss: str = "spectral",
        test_rows: Any = None,  # shape: (M, n)
        probes: Any = None,  # shape: (K, n)
        num_probes: int = 100,
        probe_seed: int = 0,
        normalize: bool = True,
    ) -> None:
        rows = check_rows(rows, "rows")
        if rows.dim() != 2:
            raise ShapeError(f"rows: expected a matrix of rows with shape (N, n), received shape {tuple(rows.shape)}")
        rows = rows.detach()  # constructors detach what they keep (a differentiable solve rebuilds with the graph)
        self.rows = rows
        n = rows.shape[-1]
        self.n = n
        dtype, device = rows.dtype, rows.device
        if test_rows is not None:
            test_rows = check_rows(test_rows, "test_rows")
            if test_rows.dim() != 2 or test_rows.shape[-1] != n:
                raise ShapeError(
                    f"test_rows: expected shape (M, n) = (M, {n}) to match rows {tuple(rows.shape)}, "
                    f"received {tuple(test_rows.shape)}"
                )
            test_rows = test_rows.detach().to(dtype=dtype, device=device)
        self.test_rows: torch.Tensor | None = test_rows
        self.bandwidth = default_bandwidth(n) if bandwidth is None else check_bandwidth(bandwidth, n)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        if not isinstance(normalize, bool):
            raise InputError(f"normalize: expected True or False, received {normalize!r}")
        self.normalize = normalize
        rms = rows.square().mean().sqrt()
        # An all-zero training set has no scale to learn: keep 1 so predictions stay finite.
        self.scale = rms if normalize and bool(rms > 0) else torch.ones((), dtype=dtype, device=device)
        self.loss_kind = check_choice(loss, "loss", LOSSES)
        self.num_probes = check_int(num_probes, "num_probes", minimum=1)
        self.probe_seed = check_int(probe_seed, "probe_seed")
        self.probes = resolve_probes(self.loss_kind, probes, n, self.num_probes, self.probe_seed, dtype, device)
        if self.probes is not None:
            self.num_probes = self.probes.shape[0]
        self._weights = probe_weights(self.probes, n, dtype, device)  # (n, K)
        self._design = design(self._weights, self.bandwidth)  # (n·K, 2b+1)
        self._gram = self._design.T @ self._design
        self._targets = weigh(row_to_matrix(rows), self._weights, self.probes)  # (N, n, K): T W, computed once
        self._rhs = self._targets.flatten(-2) @ self._design  # (N, 2b+1)
        self._target_sq = self._targets.square().sum(dim=(-2, -1))  # (N,)
        # The architecture only; its parameters live in the params dict (meta: no storage).
        self.network = nn.Sequential(
            nn.Linear(n, self.hidden, device="meta"),
            nn.Tanh(),
            nn.Linear(self.hidden, self.hidden, device="meta"),
            nn.Tanh(),
            nn.Linear(self.hidden, 2 * self.bandwidth + 1, device="meta"),
        )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, matrix: Any, **options: Any) -> ToeplitzNetProblem:
        """Build from a matrix whose rows are the training rows ``(N, n)``."""
        return cls(matrix, **options)

    @classmethod
    def estimated_bytes(cls, size: int, dtype: torch.dtype = torch.float64, **options: Any) -> int:
        """Each data row's n × n matrices (train + test rows, a few per row): about 3 (rows) n² numbers."""
        rows = int(options.get("train", EXAMPLE_TRAIN)) + int(options.get("test", EXAMPLE_TEST))
        return 3 * rows * size * size * (torch.finfo(dtype).bits // 8)

    @classmethod
    def example(
        cls,
        size: int | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        train: int = EXAMPLE_TRAIN,
        test: int = EXAMPLE_TEST,
        **options: Any,
    ) -> ToeplitzNetProblem:
        """Seed 004's data: rows ``rand(n) · n`` with ``n = 11`` (or ``size``), 256 to train and 64 held out."""
        n = SEED_N if size is None else check_int(size, "size", minimum=1)
        train = check_int(train, "train", minimum=1)
        test = check_int(test, "test", minimum=1)
        generator = torch.Generator().manual_seed(check_int(seed, "seed"))
        rows = torch.rand(train + test, n, generator=generator, dtype=torch.float64) * n
        rows = rows.to(dtype)
        return cls(rows[:train], test_rows=rows[train:], **options)

    # -- data ---------------------------------------------------------------------------------
    @classmethod
    def demo(cls, quick: bool = False) -> list[DemoPanel]:
        """The example on 64 training rows (16 held out) with ``auto``: Levenberg-Marquardt on the declared
        ``J Jᵀ`` converges there in 7 steps, about 1.5 s (the full example: 22 steps, 9-11 s at one thread on
        a loaded two-core machine, ``benchmarks/results/toeplitz-net.md``)."""
        return [DemoPanel(cls.name, [DemoRun("", cls.example(train=64, test=16), {"max_steps": 100})])]

    # -- optimisation -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> Params:
        """PyTorch's default ``nn.Linear`` init, ``U(−1/√fan_in, 1/√fan_in)``, drawn from ``generator``."""
        params: Params = {}
        for name, layer in self.network.named_children():
            if not isinstance(layer, nn.Linear):
                continue
            bound = 1.0 / math.sqrt(layer.in_features)
            for kind, shape in (("weight", layer.weight.shape), ("bias", layer.bias.shape)):
                draw = torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1
                params[f"{name}.{kind}"] = (bound * draw).to(dtype=self.dtype, device=self.device)
        return params

    def predict(self, params: Params, rows: torch.Tensor) -> torch.Tensor:
        """Band parameters the network gives for ``rows``.  # rows: (..., n) -> (..., 2b+1)"""
        return self.scale * functional_call(self.network, params, (rows / self.scale,))

    def _loss_on(self, bands: torch.Tensor) -> torch.Tensor:
        # ‖t_s − D c_s‖² expanded: ‖t_s‖² − 2 h_s·c_s + c_sᵀ G c_s with G = DᵀD and h_s = Dᵀ t_s
        # precomputed, so a step costs O(N (2b+1)²) instead of O(N n² K); exact up to rounding.
        quadratic = ((bands @ self._gram) * bands).sum(-1)
        return (self._target_sq - 2 * (self._rhs * bands).sum(-1) + quadratic).mean()

    def loss(self, params: Params) -> torch.Tensor:
        return self._loss_on(self.predict(params, self.rows))

    def sum_of_squares(self) -> SumOfSquares:
        r"""The loss as ``‖r‖² / N + c`` with ``r_s = Lᵀ(f_θ(r_s) − c*_s)`` (unlocks ``levenberg-marquardt``).

        ``‖t_s − D c‖² = (c − c*_s)ᵀ G (c − c*_s) + ‖t_s − D c*_s‖²`` for the least-squares bands
        ``c*_s`` and ``G = DᵀD = L Lᵀ`` (Cholesky), so the network's loss is a sum of squared
        residuals plus the constant ``c = mean_s (‖t_s‖² − h_s·c*_s)``, the best possible loss. It
        declares ``J Jᵀ`` too (:meth:`_tangent_gram`): with fewer residuals than parameters (the example's
        1,792 against 12,007) Levenberg-Marquardt then solves in residual space without forming ``J``.
        """
        reference = self.reference()
        factor = torch.linalg.cholesky(self._gram)  # G = L Lᵀ; the design has full column rank
        floor = (self._target_sq - (self._rhs * reference).sum(-1)).mean()
        count = self.rows.shape[0]

        def residuals(params: Params) -> torch.Tensor:
            return (self.predict(params, self.rows) - reference) @ factor  # shape: (N, 2b+1)

        def loss_of(r: torch.Tensor) -> torch.Tensor:
            return r.square().sum() / count + floor

        def gram(params: Params) -> torch.Tensor:
            return self._tangent_gram(params, factor)

        return SumOfSquares(residuals=residuals, loss_of=loss_of, gram=gram)

    def _tangent_gram(self, params: Params, factor: torch.Tensor) -> torch.Tensor:
        r"""``J Jᵀ`` of the residuals ``r = (f_θ(rows) − c*) L`` over every network parameter, ``J`` never formed.

        A linear layer ``z = W a + b`` contributes ``∂r_s/∂W = S_s ⊗ a_s`` (``S_s = ∂r_s/∂z_s``, one row per
        residual of row ``s``), so its share of ``J Jᵀ`` is ``(S_s S_tᵀ) (a_s·a_t + 1)``, the bias being the
        ``+ 1``: the network's tangent kernel, one ``(N m × width)`` product a layer instead of a
        ``(N m × parameters)`` Jacobian. ``S`` starts at ``c Lᵀ`` (``c`` the input scale) and is carried back
        through each layer (``S W``) and each tanh (times ``1 − tanh²``).  # shape: (N·(2b+1), N·(2b+1))
        """
        with torch.no_grad():
            inputs: list[torch.Tensor] = []  # each linear layer's input, shape (N, in)
            weights: list[torch.Tensor] = []  # and its weight, shape (out, in)
            slopes: list[torch.Tensor] = []  # each tanh's derivative at its input, shape (N, width)
            a = self.rows / self.scale
            for name, layer in self.network.named_children():
                if isinstance(layer, nn.Linear):
                    inputs.append(a)
                    weights.append(params[f"{name}.weight"].detach())
                    a = a @ weights[-1].mT + params[f"{name}.bias"].detach()
                else:
                    a = torch.tanh(a)
                    slopes.append(1 - a * a)
            count, outputs = self.rows.shape[0], factor.shape[-1]
            kernels = [(a @ a.mT + 1)[:, None, :, None] for a in inputs]  # a_s·a_t + 1, shape (N, 1, N, 1)
            # the output layer: S_s = c Lᵀ for every row, so S_s S_tᵀ = c² LᵀL (no product over the rows)
            top = (self.scale * self.scale) * (factor.mT @ factor)
            gram = kernels[-1] * top[None, :, None, :]
            sensitivity = (self.scale * factor.mT) @ weights[-1] * slopes[-1][:, None, :]  # shape: (N, m, width)
            for index in range(len(weights) - 2, -1, -1):
                flat = sensitivity.reshape(count * outputs, -1)
                gram.addcmul_((flat @ flat.mT).view(count, outputs, count, outputs), kernels[index])  # one pass
                if index:
                    sensitivity = (sensitivity @ weights[index]) * slopes[index - 1][:, None, :]
            return gram.view(count * outputs, count * outputs)

    def normalized(self) -> Normalization | None:
        r"""The problem of the rows :math:`2^{-e} r` (and test rows); the bands scale with the rows.

        With ``normalize=True`` the prediction :math:`s\,g_θ(r / s)` is already unit-free in θ
        (``s``, the RMS entry, scales exactly by :math:`2^{-e}`): the parameters restore unchanged.
        Otherwise the first layer's weight restores times :math:`2^{-e}` (it meets :math:`r` instead of
        :math:`2^{-e} r`) and the output layer's weight and bias times :math:`2^{e}`.
        """
        exponent = power_of_two_scale(self.rows)
        check_representable("rows", exponent, self.dtype, "the predicted bands")
        if exponent == 0:
            return None
        work = self.rebuild(
            rows=scale_by_power_of_two(self.rows, -exponent),
            test_rows=None if self.test_rows is None else scale_by_power_of_two(self.test_rows, -exponent),
            probes=self.probes,
        )
        linear = [name for name, layer in self.network.named_children() if isinstance(layer, nn.Linear)]
        powers = {f"{linear[-1]}.weight": exponent, f"{linear[-1]}.bias": exponent}
        powers[f"{linear[0]}.weight"] = powers.get(f"{linear[0]}.weight", 0) - exponent

        def restore(params: Params) -> Params:
            if self.normalize:
                return dict(params)
            return {key: scale_by_power_of_two(value, powers.get(key, 0)) for key, value in params.items()}

        return Normalization(problem=work, restore=restore, exponent=exponent)

    # -- answers ------------------------------------------------------------------------------
    def solution(self, params: Params) -> torch.Tensor:
        """Predicted band parameters for every training row.  # shape: (N, 2b+1)

        Detached, as every ``solution()``; read by a differentiable solve (where ``detach`` keeps the graph,
        :mod:`gdla.differentiation`) it depends on the weights and on the rows, the network's input.
        """
        return self.predict({key: value.detach() for key, value in params.items()}, self.rows.detach()).detach()

    def residual(self, params: Params) -> torch.Tensor:
        """Relative residual of the rows' normal equations over the whole training set:
        ``‖P G − H‖_F / (‖P G‖_F + ‖H‖_F)`` with ``P`` the predicted bands ``(N, 2b+1)`` and
        ``G c = h_s`` each row's least-squares equations. 0 only if every prediction is optimal."""
        return normal_equations_gap(self._gram, self._rhs, self.solution(params), dim=(-2, -1))

    def reference(self) -> torch.Tensor:
        """Each training row's least-squares bands (``torch.linalg.lstsq``, all rows at once).  # (N, 2b+1)"""
        if not hasattr(self, "_reference"):
            self._reference = lstsq_bands(self._design, self._targets.flatten(-2))
        return self._reference

    def error(self, params: Params) -> torch.Tensor:
        """``‖P − P_ref‖_F / ‖P_ref‖_F`` over all training rows' bands."""
        return relative_error(self.solution(params), self.reference(), dim=(-2, -1))

    def test_error(self, params: Params) -> torch.Tensor | None:
        """The same relative error on the held-out rows (``None`` without ``test_rows``)."""
        if self.test_rows is None:
            return None
        with torch.no_grad():
            predicted = self.predict(params, self.test_rows)
        targets = weigh(row_to_matrix(self.test_rows), self._weights, self.probes).flatten(-2)
        return relative_error(predicted, lstsq_bands(self._design, targets), dim=(-2, -1))

    def metrics(self, params: Params) -> dict[str, float]:
        """``residual``, ``error``, ``loss`` and, with held-out rows, ``test_error``."""
        extra: dict[str, Any] = {"loss": lambda: self.loss(params)}
        if self.test_rows is not None:
            extra["test_error"] = lambda: self.test_error(params)
        return super().metrics(params) | extra

    def describe(self) -> dict[str, Any]:
        sizes = [(layer.in_features, layer.out_features) for layer in self.network if isinstance(layer, nn.Linear)]
        return {
            "name": self.name,
            "n": self.n,
            "train_rows": int(self.rows.shape[0]),
            "test_rows": None if self.test_rows is None else int(self.test_rows.shape[0]),
            "bandwidth": self.bandwidth,
            "hidden": self.hidden,
            "parameters": sum(i * o + o for i, o in sizes),
            "loss": self.loss_kind,
            "num_probes": None if self.probes is None else int(self.probes.shape[0]),
            "normalize": self.normalize,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


@gdla.hookimpl
def register_problems(register: Any) -> None:
    register(ToeplitzNetProblem)
