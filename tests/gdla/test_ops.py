"""The custom ops of gdla._C against pure-PyTorch references: values, gradients, errors.

Every test runs on "cpu" and on "cuda" (skipped without a GPU or without CUDA kernels). torch.compile
and opcheck live in test_ops_compile.py.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from gdla.errors import InputError, ShapeError

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

CUDA_READY = torch.cuda.is_available() and ops.has_cuda_kernels()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")]),
]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"rtol": 2e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def make(shape: tuple[int, ...], dtype: torch.dtype, device: str, layout: str = "contiguous") -> torch.Tensor:
    """A random tensor of ``shape``; ``layout`` "transposed" or "strided" gives a non-contiguous view."""
    if layout == "transposed":
        return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype, device=device).mT
    if layout == "strided":
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
    return torch.randn(*shape, dtype=dtype, device=device)


def eye_like(P: torch.Tensor) -> torch.Tensor:
    return torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)


def reference_inverse_mse(A: torch.Tensor, M: torch.Tensor, side: str) -> torch.Tensor:
    P = {"right": lambda: A @ M, "left": lambda: M @ A, "both": lambda: (A @ M + M @ A) / 2}[side]()
    return (P - eye_like(P)).square().mean(dim=(-2, -1)).sum()


def reference_svd_loss(M, U, s, V, weight_u: float, weight_v: float) -> torch.Tensor:
    fit = ((U * (s * s).unsqueeze(-2)) @ V.mT - M).square().mean(dim=(-2, -1))
    gram_u = (U.mT @ U - eye_like(U.mT @ U)).square().mean(dim=(-2, -1))
    gram_v = (V.mT @ V - eye_like(V.mT @ V)).square().mean(dim=(-2, -1))
    return (fit + weight_u * gram_u + weight_v * gram_v).sum()


def reference_grads(loss_fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = loss_fn(*leaves)
    return loss.detach(), list(torch.autograd.grad(loss, leaves))


# -- inverse MSE ----------------------------------------------------------------------------------
# Square problems with n <= 8 take the register-resident path, the rest the BLAS-product path.
INVERSE_CASES = [
    ((5, 3), "right"),
    ((2, 3, 4, 3), "right"),
    ((10, 10), "right"),
    ((3, 5), "left"),
    ((3, 4, 4), "left"),
    ((9, 9), "left"),
    ((4, 4), "both"),
    ((2, 12, 12), "both"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize(("shape", "side"), INVERSE_CASES)
def test_inverse_mse_and_grad_matches_autograd(device, dtype, layout, shape, side) -> None:
    A = make(shape, dtype, device, layout)
    M = make((*shape[:-2], shape[-1], shape[-2]), dtype, device, "transposed" if layout == "strided" else layout)
    expected_loss, (expected_grad,) = reference_grads(lambda m: reference_inverse_mse(A, m, side), M)
    loss, grad = ops.inverse_mse_and_grad(A, M, side)
    assert loss.shape == () and loss.dtype == dtype and grad.shape == M.shape
    torch.testing.assert_close(loss, expected_loss, **TOL[dtype])
    torch.testing.assert_close(grad, expected_grad, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "side"), INVERSE_CASES)
def test_inverse_mse_backward_matches_autograd_for_A_and_M(device, dtype, shape, side) -> None:
    A = make(shape, dtype, device)
    M = make((*shape[:-2], shape[-1], shape[-2]), dtype, device)
    expected_loss, expected = reference_grads(lambda a, m: 3.0 * reference_inverse_mse(a, m, side), A, M)
    leaves = [A.clone().requires_grad_(True), M.clone().requires_grad_(True)]
    loss = 3.0 * ops.inverse_mse(*leaves, side)  # an upstream gradient other than 1
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, **TOL[dtype])
    for leaf, grad in zip(leaves, expected, strict=True):
        torch.testing.assert_close(leaf.grad, grad, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_inverse_mse_skips_grad_A_when_A_is_constant(device) -> None:
    A = make((4, 4), torch.float64, device)
    M = make((4, 4), torch.float64, device).requires_grad_(True)
    ops.inverse_mse(A, M, "left").backward()
    _, (expected,) = reference_grads(lambda m: reference_inverse_mse(A, m, "left"), M)
    assert A.grad is None
    torch.testing.assert_close(M.grad, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["right", "left", "both", 2])
@pytest.mark.parametrize("shape", [(2, 3, 3), (9, 9)])
def test_inverse_mse_gradcheck(device, side, shape) -> None:
    A = make(shape, torch.float64, device).requires_grad_(True)
    M = make(shape, torch.float64, device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, m: ops.inverse_mse(a, m, side), (A, M))


def test_inverse_mse_at_the_inverse_is_zero() -> None:
    A = torch.randn(5, 5, dtype=torch.float64) + 5 * torch.eye(5, dtype=torch.float64)
    loss, grad = ops.inverse_mse_and_grad(A, torch.linalg.inv(A), "both")
    assert float(loss) < 1e-28 and float(grad.abs().max()) < 1e-14


# -- masked Hadamard ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "layout"), [((3, 3), "contiguous"), ((2, 5, 7), "transposed"), ((200, 200), "strided")]
)
def test_masked_hadamard_values_and_grads(device, dtype, shape, layout) -> None:
    init, U = make(shape, dtype, device, layout), make(shape, dtype, device, layout)
    omega = (torch.rand(shape, device=device) > 0.4).to(dtype)
    expected, grads = reference_grads(lambda i, o, u: (i + o * u).square().sum(), init, omega, U)
    leaves = [t.clone().requires_grad_(True) for t in (init, omega, U)]
    S = ops.masked_hadamard(*leaves)
    torch.testing.assert_close(S.detach(), init + omega * U, **TOL[dtype])
    S.square().sum().backward()
    for leaf, grad in zip(leaves, grads, strict=True):
        torch.testing.assert_close(leaf.grad, grad, **TOL[dtype])


def test_masked_hadamard_accepts_a_bool_mask_and_gradchecks() -> None:
    init, U = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    mask = torch.rand(4, 3) > 0.5
    torch.testing.assert_close(ops.masked_hadamard(init, mask, U), torch.where(mask, init + U, init))
    omega = mask.double().requires_grad_(True)
    assert torch.autograd.gradcheck(ops.masked_hadamard, (init.requires_grad_(True), omega, U.requires_grad_(True)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize(
    ("shape", "layout"), [((6, 5), "contiguous"), ((3, 4, 5), "transposed"), ((256, 200), "contiguous")]
)
def test_masked_update_matches_the_torch_update(device, dtype, momentum, shape, layout) -> None:
    U, G = make(shape, dtype, device, layout), make(shape, dtype, device)
    omega = (torch.rand(shape, device=device) > 0.5).to(dtype)
    buf = make(shape, dtype, device, layout) if momentum else None
    expected_buf = momentum * buf + omega * G if momentum else None
    expected_U = U - 0.1 * (expected_buf if momentum else omega * G)
    storage = U.data_ptr()
    returned = ops.masked_update_(U, omega, G, 0.1, momentum, buf)
    assert returned is U and U.data_ptr() == storage  # in place, layout kept
    torch.testing.assert_close(U, expected_U, **TOL[dtype])
    if momentum:
        torch.testing.assert_close(buf, expected_buf, **TOL[dtype])


def test_masked_update_tells_autograd_it_changed_U() -> None:
    U, omega, G, buf = (torch.randn(3, 3) for _ in range(4))
    leaf = torch.randn(3, 3, requires_grad=True)
    with torch.no_grad():
        versions = U._version, buf._version
        ops.masked_update_(U, omega, G, 0.1, 0.9, buf)
    assert U._version > versions[0] and buf._version > versions[1]
    saved = leaf * U  # autograd saves U for this product's backward
    with torch.no_grad():
        ops.masked_update_(U, omega, G, 0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        ops.masked_update_(leaf, omega, G, 0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda A: ops.inverse_mse_and_grad(A, A.detach().clone())[0],
        lambda A: ops.svd_loss_and_grad(A, A, torch.ones(3), A.detach(), 0.1, 0.1)[1],
        lambda A: ops.small_inverse_newton_schulz(A)[0],
        lambda A: ops.small_inverse_momentum(A, A.detach(), 0.1, 0.5, 3),
    ],
)
def test_ops_without_a_derivative_refuse_backward(call) -> None:
    A = (torch.eye(3) + 0.1 * torch.randn(3, 3)).requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"derivative for gdla::\w+ is not implemented"):
        call(A).sum().backward()


# -- SVD loss -------------------------------------------------------------------------------------
SVD_CASES = [((6, 5), 3, (0.3, 0.7)), ((4, 4), 4, (0.01, 0.01)), ((5, 7), 2, (0.0, 0.0)), ((2, 5, 3), 3, (1.0, 0.0))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize(("shape", "k", "weights"), SVD_CASES)
def test_svd_loss_and_grad_matches_autograd(device, dtype, layout, shape, k, weights) -> None:
    *batch, m, n = shape
    M = make(shape, dtype, device, layout)
    U, V = make((*batch, m, k), dtype, device, layout), make((*batch, n, k), dtype, device, layout)
    s = torch.rand(*batch, 2 * k, dtype=dtype, device=device)[..., ::2] + 0.5  # strided
    expected_loss, expected = reference_grads(lambda u, s_, v: reference_svd_loss(M, u, s_, v, *weights), U, s, V)
    loss, *grads = ops.svd_loss_and_grad(M, U, s, V, *weights)
    torch.testing.assert_close(loss, expected_loss, **TOL[dtype])
    for grad, want in zip(grads, expected, strict=True):
        assert grad.shape == want.shape
        torch.testing.assert_close(grad, want, **TOL[dtype])
    torch.testing.assert_close(ops.svd_loss(M, U, s, V, *weights), expected_loss, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_svd_loss_gradcheck_including_M(device) -> None:
    tensors = [make(shape, torch.float64, device).requires_grad_(True) for shape in ((5, 4), (5, 3), (3,), (4, 3))]
    assert torch.autograd.gradcheck(lambda *t: ops.svd_loss(*t, 0.3, 0.2), tensors)


def test_svd_loss_is_zero_at_an_exact_svd() -> None:
    M = torch.randn(6, 4, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    loss, grad_U, grad_s, grad_V = ops.svd_loss_and_grad(M, U, S.sqrt(), Vh.mT, 0.5, 0.5)
    assert float(loss) < 1e-28
    assert max(float(g.abs().max()) for g in (grad_U, grad_s, grad_V)) < 1e-13


# -- errors ---------------------------------------------------------------------------------------
def test_wrapper_errors_name_argument_expected_and_received() -> None:
    A = torch.randn(4, 5)
    with pytest.raises(
        ShapeError,
        match=r"inverse_mse_and_grad: M must have shape \(5, 4\) to match A of shape \(4, 5\), received \(3, 3\)",
    ):
        ops.inverse_mse_and_grad(A, torch.randn(3, 3), "right")
    with pytest.raises(InputError, match="M must have the dtype of A \\(torch.float32\\), received torch.float64"):
        ops.inverse_mse_and_grad(A, torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(InputError, match="M must be on the device of A \\(cpu\\), received meta"):
        ops.inverse_mse(A, torch.empty(5, 4, device="meta"))
    with pytest.raises(InputError, match="A must be float32 or float64, received torch.int64"):
        ops.inverse_mse(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2))
    with pytest.raises(InputError, match="side must be one of 'right'"):
        ops.inverse_mse(A, A.mT, "up")
    with pytest.raises(ShapeError, match="side='both' needs a square A"):
        ops.inverse_mse(A, A.mT, "both")
    with pytest.raises(ShapeError, match=r"V must have shape \(5, 2\)"):
        ops.svd_loss_and_grad(A, torch.randn(4, 2), torch.rand(2), torch.randn(5, 3), 0.1, 0.1)
    with pytest.raises(InputError, match="weight_u: expected a number >= 0, received -1"):
        ops.svd_loss_and_grad(A, torch.randn(4, 2), torch.rand(2), torch.randn(5, 2), -1, 0.1)
    with pytest.raises(InputError, match="momentum=0.5 needs buf"):
        ops.masked_update_(A, torch.ones_like(A), A, 0.1, 0.5)
    with pytest.raises(ShapeError, match=r"n <= 16, received \(2, 17, 17\)"):
        ops.small_inverse_newton_schulz(torch.randn(2, 17, 17))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: torch.ops.gdla.inverse_mse(torch.randn(4, 5), torch.randn(3, 3), "right"),
            ValueError,
            r"inverse_mse: M must have shape \(5, 4\) to match A of shape \(4, 5\); received \(3, 3\)",
        ),
        (
            lambda: torch.ops.gdla.inverse_mse_and_grad(torch.randn(2, 3, 3), torch.randn(2, 3, 3).double(), "left"),
            TypeError,
            r"inverse_mse_and_grad: M must have the dtype of A \(float32\); received float64",
        ),
        (
            lambda: torch.ops.gdla.inverse_mse(torch.randn(3), torch.randn(3), "right"),
            ValueError,
            r"inverse_mse: A must be a matrix of shape \(\.\.\., m, n\); received shape \(3,\)",
        ),
        (
            lambda: torch.ops.gdla.inverse_mse(torch.randn(3, 3), torch.randn(3, 3), "diagonal"),
            ValueError,
            "inverse_mse: side must be one of 'right' .* received 'diagonal'",
        ),
        (
            lambda: torch.ops.gdla.masked_hadamard(torch.randn(2, 3), torch.randn(3, 2), torch.randn(2, 3)),
            ValueError,
            r"masked_hadamard: omega must have shape \(2, 3\) to match U; received \(3, 2\)",
        ),
        (
            lambda: torch.ops.gdla.masked_update_(torch.randn(3), torch.ones(3), torch.ones(3), 0.1, 0.9, None),
            ValueError,
            "masked_update_: momentum=0.9 needs buf",
        ),
        (
            lambda: torch.ops.gdla.svd_loss_and_grad(
                torch.randn(5, 4), torch.randn(5, 2), torch.rand(3), torch.randn(4, 2), 0.1, 0.1
            ),
            ValueError,
            r"svd_loss_and_grad: s must have shape \(2,\) to match U of shape \(5, 2\); received \(3,\)",
        ),
        (
            lambda: torch.ops.gdla.svd_loss(
                torch.randn(5, 4), torch.randn(5, 2), torch.rand(2), torch.randn(4, 2), float("nan"), 0.1
            ),
            ValueError,
            "svd_loss: weight_u must be a finite number >= 0; received nan",
        ),
        (
            lambda: torch.ops.gdla.small_inverse_newton_schulz(torch.randn(4, 3, 5), None, 10, 1e-6),
            ValueError,
            r"small_inverse_newton_schulz: A must hold square n x n matrices with n <= 16 .*received shape \(4, 3, 5\)",
        ),
        (
            lambda: torch.ops.gdla.small_inverse_momentum(torch.randn(2, 2, 2), torch.randn(2, 2, 2), 0.1, 1.0, 5),
            ValueError,
            r"small_inverse_momentum: momentum must be a number in \[0, 1\); received 1",
        ),
    ],
)
def test_op_checks_name_argument_expected_and_received(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")
@pytest.mark.cuda
def test_op_rejects_mixed_devices_on_cuda() -> None:
    with pytest.raises(
        ValueError, match=r"inverse_mse: M must be on the device of A \(cuda:0\); received a tensor on cpu"
    ):
        torch.ops.gdla.inverse_mse(torch.randn(3, 3, device="cuda"), torch.randn(3, 3), "right")


# -- build ----------------------------------------------------------------------------------------
def test_openmp_is_enabled_and_follows_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.ops.gdla.openmp_max_threads() == threads  # same OpenMP runtime as torch
    finally:
        torch.set_num_threads(before)


def test_import_without_the_extension_says_how_to_build(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gdla._C", None)  # makes `import gdla._C` fail
    for module in ("gdla.ops", "gdla.ops_small", "gdla._op_checks"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        importlib.import_module("gdla.ops")


# -- the extension's limits -----------------------------------------------------------------------
def test_limits_are_read_from_the_extension_and_match_the_stand_ins() -> None:
    from gdla import limits

    names, values, dtypes = torch.ops.gdla.limits()
    exported = dict(zip(names, values, strict=True))
    assert limits.FROM_EXTENSION
    assert exported == limits.WITHOUT_EXTENSION[0]  # the stand-ins used without the extension agree
    assert tuple(dtypes) == limits.WITHOUT_EXTENSION[1]
    assert (ops.SMALL_MAX_N, ops.RUN_MAX_N, ops.RUN_MAX_COLUMNS, ops.RUN_MAX_HOPS) == (
        exported["SMALL_MAX_N"], exported["RUN_MAX_N"], exported["RUN_MAX_COLUMNS"], exported["RUN_MAX_HOPS"]
    )
    assert limits.DTYPES == (torch.float32, torch.float64)


def test_limits_bound_what_the_kernels_take() -> None:
    n = ops.SMALL_MAX_N
    X, _ = ops.small_inverse_newton_schulz(torch.eye(n).expand(2, n, n), None, 5, 1e-6)
    assert torch.equal(X, torch.eye(n).expand(2, n, n))
    with pytest.raises(ValueError, match=f"n <= {n}"):
        torch.ops.gdla.small_inverse_newton_schulz(torch.eye(n + 1), None, 5, 1e-6)
    with pytest.raises(TypeError, match="A must be float32 or float64; received"):
        torch.ops.gdla.small_inverse_residuals(torch.eye(4, dtype=torch.half), torch.eye(4, dtype=torch.half), "right")


def test_limits_without_the_extension_use_the_stand_ins(monkeypatch) -> None:
    import gdla
    from gdla import limits

    monkeypatch.setitem(sys.modules, "gdla._C", None)  # makes `import gdla._C` fail
    monkeypatch.delitem(sys.modules, "gdla.limits")
    monkeypatch.setattr(gdla, "limits", limits)  # the package attribute the fresh import replaces, put back after
    fresh = importlib.import_module("gdla.limits")
    assert not fresh.FROM_EXTENSION
    assert fresh.SMALL_MAX_N == limits.SMALL_MAX_N and fresh.RUN_MAX_HOPS == limits.RUN_MAX_HOPS
