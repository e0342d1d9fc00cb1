"""Whole-run kernels (``gdla.ops.inverse_momentum_run``) against the step-by-step PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from gdla.errors import InputError, ShapeError

ops = pytest.importorskip("gdla.ops", reason="the compiled extension gdla._C is not built")

CUDA_READY = torch.cuda.is_available() and ops.has_cuda_kernels()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device")]),
]
TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-6}, torch.float64: {"rtol": 1e-11, "atol": 1e-13}}


def problems(batch: tuple[int, ...], n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    A = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    X = A.mT / (torch.linalg.matrix_norm(A, 1) * torch.linalg.matrix_norm(A, math.inf))[..., None, None]
    return A.to(dtype=dtype, device=device).contiguous(), X.to(dtype=dtype, device=device).contiguous()


def reference(
    A: torch.Tensor, X: torch.Tensor, side: str, lr: float, mu: float, steps: int
) -> tuple[list, torch.Tensor]:
    """Seed 000's rule with autograd gradients of sum_b mean((P_b - I)^2)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    X = X.clone()
    velocity = None
    losses = []
    for _ in range(steps):
        leaf = X.detach().requires_grad_(True)
        P = {"right": A @ leaf, "left": leaf @ A, "both": (A @ leaf + leaf @ A) / 2}[side]
        loss = (P - eye).square().mean(dim=(-2, -1)).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
        losses.append(float(loss.detach()))
        velocity = grad.clone() if velocity is None else velocity * mu + grad
        X = X - velocity * lr
    return losses, X


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize(("batch", "n"), [((), 4), ((3,), 2), ((2, 3), 8)])
def test_matches_the_autograd_reference(device: str, dtype: torch.dtype, side: str, batch: tuple, n: int) -> None:
    A, X = problems(batch, n, dtype, device)
    buf = torch.zeros_like(X)
    losses = ops.inverse_momentum_run(A, X, buf, side, 0.3, 0.8, 25, started=False)
    expected_losses, expected_X = reference(A, problems(batch, n, dtype, device)[1], side, 0.3, 0.8, 25)
    assert losses.dtype == torch.float64 and losses.shape == (25,)
    torch.testing.assert_close(losses, torch.tensor(expected_losses, dtype=torch.float64, device=device), **TOL[dtype])
    torch.testing.assert_close(X, expected_X, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [(), (300,)])  # 300 problems: the batch runs on several threads
@pytest.mark.parametrize("side", ["right", "left"])  # one 4x4 float32 problem: the two-vector kernel, both layouts
def test_one_call_equals_step_by_step_bitwise(device: str, batch: tuple, side: str) -> None:
    A, X = problems(batch, 4, torch.float32, device)
    X_steps, buf, buf_steps = X.clone(), torch.zeros_like(X), torch.zeros_like(X)
    whole = ops.inverse_momentum_run(A, X, buf, side, 0.5, 0.9, 40, started=False)
    first = math.nan
    single = []
    for step in range(40):
        loss = ops.inverse_momentum_run(A, X_steps, buf_steps, side, 0.5, 0.9, 1, started=step > 0, first_loss=first)
        first = float(loss[0]) if step == 0 else first
        single.append(float(loss[0]))
    assert whole.tolist() == single
    assert torch.equal(X, X_steps) and torch.equal(buf, buf_steps)


@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_one_problem_agrees_with_the_lane_kernel_over_a_long_run(side: str) -> None:
    # one 4x4 float32 problem has its own kernel (two 8-float vectors a matrix); a batch of copies runs
    # one problem a SIMD lane: the two must follow the same trajectory to rounding for thousands of steps
    A, X = problems((), 4, torch.float32, "cpu")
    single_X, single_buf = X.clone(), torch.zeros_like(X)
    single = ops.inverse_momentum_run(A, single_X, single_buf, side, 0.3, 0.9, 2000, started=False)
    lanes_X, lanes_buf = X.expand(3, 4, 4).clone(), torch.zeros(3, 4, 4)
    lanes = ops.inverse_momentum_run(A.expand(3, 4, 4).contiguous(), lanes_X, lanes_buf, side, 0.3, 0.9, 2000,
                                     started=False)
    # the loss falls 1e12-fold to float32's floor, where what is left is rounding: atol at 1e-8 of the start. The
    # two kernels round differently (the lane kernel's multiply-adds are all fused, cpu_momentum_lanes.h), and
    # float32 trajectories that round differently drift apart by ~1e-3 of the loss once it is ~1e-6 of the start
    # (each as far from the float64 trajectory as the other)
    torch.testing.assert_close(lanes, 3 * single, rtol=1e-4, atol=1e-8 * float(single[0]))
    for member in range(3):
        torch.testing.assert_close(lanes_X[member], single_X, rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(lanes_buf[member], single_buf, rtol=1e-4, atol=1e-6)  # rounding noise at the floor
    assert float(single[-1]) < 1e-3 * float(single[0])  # a run that went somewhere


@pytest.mark.parametrize("simd_bytes", ["32", "64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_simd_widths_agree(monkeypatch: pytest.MonkeyPatch, simd_bytes: str, dtype: torch.dtype) -> None:
    # a batch runs 2-16 problems a SIMD group (the widest this CPU has, capped by GDLA_CPU_SIMD_BYTES):
    # each width must take the same steps to rounding; 53 problems fill no width's groups exactly
    A, X = problems((53,), 4, dtype, "cpu")
    results = []
    for width in ("16", simd_bytes):
        monkeypatch.setenv("GDLA_CPU_SIMD_BYTES", width)
        Xw, buf = X.clone(), torch.zeros_like(X)
        results.append((ops.inverse_momentum_run(A, Xw, buf, "right", 0.3, 0.9, 30, started=False), Xw, buf))
    tol = TOL[dtype]
    for narrow, wide in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(wide, narrow, **tol)
    expected_losses, expected_X = reference(A, X, "right", 0.3, 0.9, 30)
    torch.testing.assert_close(results[1][0], torch.tensor(expected_losses, dtype=torch.float64), **tol)
    torch.testing.assert_close(results[1][1], expected_X, **tol)


def test_same_bits_at_any_thread_count() -> None:
    A, X = problems((1000,), 3, torch.float64, "cpu")
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            Xc, buf = X.clone(), torch.zeros_like(X)
            results.append((ops.inverse_momentum_run(A, Xc, buf, "left", 0.4, 0.9, 30, started=False), Xc))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stops_after_the_step_that_diverges(dtype: torch.dtype) -> None:
    A, X = problems((), 4, dtype, "cpu")
    losses = ops.inverse_momentum_run(A, X, torch.zeros_like(X), "right", 50.0, 0.9, 1000, started=False)
    assert 1 < len(losses) < 1000
    last, first = float(losses[-1]), float(losses[0])
    assert not math.isfinite(last) or last > 1e12 * first
    assert all(math.isfinite(v) and v <= 1e12 * first for v in losses[:-1].tolist())


def test_bad_arguments_name_the_argument() -> None:
    A, X = problems((), 4, torch.float64, "cpu")
    buf = torch.zeros_like(X)
    with pytest.raises(ShapeError, match="n <= 8"):
        big = torch.eye(9, dtype=torch.float64)
        ops.inverse_momentum_run(big, big.clone(), big.clone(), "right", 0.1, 0.5, 3, started=False)
    with pytest.raises(ShapeError, match="buf must have shape"):
        ops.inverse_momentum_run(A, X, buf[:3], "right", 0.1, 0.5, 3, started=False)
    with pytest.raises(InputError, match="side must be one of"):
        ops.inverse_momentum_run(A, X, buf, "up", 0.1, 0.5, 3, started=False)
    with pytest.raises(InputError, match="lr"):
        ops.inverse_momentum_run(A, X, buf, "right", 0.0, 0.5, 3, started=False)
    with pytest.raises(ValueError, match="contiguous"):
        ops.inverse_momentum_run(A, X.mT, buf, "right", 0.1, 0.5, 3, started=False)


def test_a_batch_that_diverges_stops_where_step_by_step_stops() -> None:
    A, X = problems((300,), 4, torch.float64, "cpu")
    X_steps, buf, buf_steps = X.clone(), torch.zeros_like(X), torch.zeros_like(X)
    whole = ops.inverse_momentum_run(A, X, buf, "right", 30.0, 0.9, 500, started=False)
    assert 1 < len(whole) < 500  # it diverged inside the first chunk, after running past it
    first, single = math.nan, []
    for step in range(500):
        loss = ops.inverse_momentum_run(
            A, X_steps, buf_steps, "right", 30.0, 0.9, 1, started=step > 0, first_loss=first
        )
        first = float(loss[0]) if step == 0 else first
        single.append(float(loss[0]))
        if not math.isfinite(single[-1]) or (step > 0 and single[-1] > 1e12 * max(first, 1e-30)):
            break
    assert whole.tolist() == single
    assert torch.equal(X, X_steps) and torch.equal(buf, buf_steps)


# -- inverse_adam_run ---------------------------------------------------------------------------------
def adam_reference(A: torch.Tensor, X: torch.Tensor, side: str, rates: list[float]) -> tuple[list, torch.Tensor]:
    """torch.optim.Adam with autograd gradients of sum_b mean((P_b - I)^2), the rate set before each step."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    leaf = X.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([leaf], lr=rates[0])
    losses = []
    for rate in rates:
        optimizer.param_groups[0]["lr"] = rate
        optimizer.zero_grad()
        P = {"right": A @ leaf, "left": leaf @ A, "both": (A @ leaf + leaf @ A) / 2}[side]
        loss = (P - eye).square().mean(dim=(-2, -1)).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        optimizer.step()
    return losses, leaf.detach()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize(("batch", "n"), [((), 4), ((3,), 2), ((2,), 16), ((), 11)])
def test_adam_run_matches_torch_adam(device: str, dtype: torch.dtype, side: str, batch: tuple, n: int) -> None:
    A, X = problems(batch, n, dtype, device)
    start = X.clone()
    rates = [0.02 * 0.9**k for k in range(30)]  # a schedule: a new rate every step
    m, v = torch.zeros_like(X), torch.zeros_like(X)
    losses = ops.inverse_adam_run(A, X, m, v, side, torch.tensor(rates, dtype=torch.float64))
    expected_losses, expected_X = adam_reference(A, start, side, rates)
    assert losses.dtype == torch.float64 and losses.shape == (30,)
    torch.testing.assert_close(losses, torch.tensor(expected_losses, dtype=torch.float64, device=device), **TOL[dtype])
    torch.testing.assert_close(X, expected_X, **TOL[dtype])


@pytest.mark.parametrize("batch", [(), (5,)])
def test_adam_run_in_one_call_equals_step_by_step_bitwise(batch: tuple) -> None:
    A, X = problems(batch, 5, torch.float32, "cpu")
    X_steps = X.clone()
    m, v, m_steps, v_steps = (torch.zeros_like(X) for _ in range(4))
    rates = torch.linspace(0.05, 0.001, 60, dtype=torch.float64)
    whole = ops.inverse_adam_run(A, X, m, v, "left", rates)
    first, single = math.nan, []
    for step in range(60):
        loss = ops.inverse_adam_run(A, X_steps, m_steps, v_steps, "left", rates[step : step + 1], step0=step,
                                    first_loss=first)
        first = float(loss[0]) if step == 0 else first
        single.append(float(loss[0]))
    assert whole.tolist() == single
    assert torch.equal(X, X_steps) and torch.equal(m, m_steps) and torch.equal(v, v_steps)


@pytest.mark.parametrize("batch", [(), (4,)])
def test_adam_run_stops_after_the_step_that_diverges(batch: tuple) -> None:
    A, X = problems(batch, 3, torch.float64, "cpu")
    m, v = torch.zeros_like(X), torch.zeros_like(X)
    losses = ops.inverse_adam_run(A, X, m, v, "right", torch.full((5000,), 1e6, dtype=torch.float64), blow_up=1e3)
    assert 1 < len(losses) < 5000
    first = float(losses[0])
    assert float(losses[-1]) > 1e3 * first and all(value <= 1e3 * first for value in losses[:-1].tolist())


def test_adam_run_bad_arguments_name_the_argument() -> None:
    A, X = problems((), 4, torch.float64, "cpu")
    m, v, rates = torch.zeros_like(X), torch.zeros_like(X), torch.full((3,), 0.1, dtype=torch.float64)
    with pytest.raises(ShapeError, match="n <= 16"):
        big = torch.eye(17, dtype=torch.float64)
        ops.inverse_adam_run(big, big.clone(), big.clone(), big.clone(), "right", rates)
    with pytest.raises(ShapeError, match="exp_avg_sq must have shape"):
        ops.inverse_adam_run(A, X, m, v[:2], "right", rates)
    with pytest.raises(ShapeError, match="lrs must be a 1-D float64 CPU tensor.*float32"):
        ops.inverse_adam_run(A, X, m, v, "right", rates.float())
    with pytest.raises(InputError, match=r"betas\[1\]"):
        ops.inverse_adam_run(A, X, m, v, "right", rates, betas=(0.9, 1.0))
    with pytest.raises(InputError, match="step0"):
        ops.inverse_adam_run(A, X, m, v, "right", rates, step0=-1)
    with pytest.raises(ValueError, match="contiguous"):
        ops.inverse_adam_run(A, X.mT, m, v, "right", rates)


# -- svd_sgd_run ----------------------------------------------------------------------------------------
def svd_start(dtype: torch.dtype, device: str, m: int = 5, n: int = 4, k: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    M = torch.randn(m, n, generator=g, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0].contiguous()
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0].contiguous()
    s = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return tuple(t.to(dtype=dtype, device=device) for t in (M, U, s, V))


def svd_reference(M, U, s, V, rates, weights, momentum, nesterov):
    """torch.optim.SGD with autograd gradients of the svd problem's penalty loss, then its sign fix."""
    from gdla_plugins.problems.svd import SVDProblem

    problem = SVDProblem(M, rank=U.shape[1], weight_u=weights[0], weight_v=weights[1])
    params = {key: t.clone().requires_grad_(True) for key, t in (("U", U), ("s", s), ("V", V))}
    optimizer = torch.optim.SGD(list(params.values()), lr=rates[0], momentum=momentum, nesterov=nesterov)
    losses = []
    for rate in rates:
        optimizer.param_groups[0]["lr"] = rate
        optimizer.zero_grad()
        loss = problem.loss(params)
        loss.backward()
        losses.append(float(loss.detach()))
        optimizer.step()
        problem.project(params)
    return losses, [params[key].detach() for key in ("U", "s", "V")]


# -- stop_loss: the residual test inside a whole run ----------------------------------------------
def _momentum(A, state, steps, started, first, stop_loss):
    X, buf = state
    n = A.shape[-1]  # the gradient carries 2/n²: a rate that scales with n² takes steps of one size
    return ops.inverse_momentum_run(A, X, buf, "right" if n != 3 else "both", 0.02 * n * n, 0.8, steps,
                                    started=started, first_loss=first, stop_loss=stop_loss)


def _adam(A, state, steps, started, first, stop_loss, *, step0=0):
    X, m, v = state
    rates = torch.full((steps,), 0.05, dtype=torch.float64)
    return ops.inverse_adam_run(A, X, m, v, "left", rates, step0=step0, first_loss=first, stop_loss=stop_loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("method", "n"), [("momentum", 4), ("momentum", 3), ("momentum", 7), ("adam", 4),
                                           ("adam", 11)])
def test_stop_loss_run_stops_where_a_step_by_step_run_testing_each_step_does(device, dtype, method, n) -> None:
    A, X = problems((), n, dtype, device)
    count = 2 if method == "momentum" else 3
    whole_state = [X.clone()] + [torch.zeros_like(X) for _ in range(count - 1)]
    step_state = [X.clone()] + [torch.zeros_like(X) for _ in range(count - 1)]
    side = {"momentum": "both" if n == 3 else "right", "adam": "left"}[method]
    P = {"right": A @ X, "left": X @ A, "both": (A @ X + X @ A) / 2}[side]
    stop_loss = 1e-6 * float((P - torch.eye(n, dtype=dtype, device=device)).square().mean())
    budget = 3000
    if method == "momentum":
        whole = _momentum(A, whole_state, budget, False, math.nan, stop_loss)
    else:
        whole = _adam(A, whole_state, budget, False, math.nan, stop_loss)
    losses, final = whole[:-1].tolist(), float(whole[-1])
    assert 0 < len(losses) < budget and final <= stop_loss  # stopped by the test, before the budget
    assert all(value > stop_loss for value in losses[1:])  # no earlier iterate passed it
    # step by step: one step a call, each call reporting the loss where its step left X
    first, single = math.nan, []
    for step in range(budget):
        if method == "momentum":
            out = _momentum(A, step_state, 1, step > 0, first, stop_loss)
        else:
            out = _adam(A, step_state, 1, step > 0, first, stop_loss, step0=step)
        assert len(out) == 2
        first = float(out[0]) if step == 0 else first
        single.append(float(out[0]))
        if float(out[1]) <= stop_loss:
            break
    assert single == losses and float(out[1]) == final
    for a, b in zip(whole_state, step_state, strict=True):
        assert torch.equal(a, b)


def test_stop_loss_reports_the_loss_at_the_final_iterate() -> None:
    A, X = problems((), 4, torch.float64, "cpu")
    buf = torch.zeros_like(X)
    out = ops.inverse_momentum_run(A, X, buf, "right", 0.3, 0.8, 25, started=False, stop_loss=0.0)
    assert len(out) == 26  # the budget ran out: 25 steps, then the loss where they left X
    expected = float(((A @ X - torch.eye(4, dtype=A.dtype)) ** 2).mean())
    assert float(out[-1]) == pytest.approx(expected, rel=1e-12)
    assert float(out[-1]) < float(out[-2])  # the run went downhill
    nothing = ops.inverse_momentum_run(A, X.clone(), buf.clone(), "right", 0.3, 0.8, 0, started=True, stop_loss=0.0)
    assert nothing.tolist() == pytest.approx([expected], rel=1e-12)  # no step: only the look at X
    m, v = torch.zeros_like(X), torch.zeros_like(X)
    blown = ops.inverse_adam_run(A, X, m, v, "right", torch.full((500,), 1e6, dtype=torch.float64), blow_up=1e3,
                                 stop_loss=1e-30)
    assert 1 < len(blown) < 501 and math.isnan(float(blown[-1]))  # after a diverging step: NaN, no look


def test_stop_loss_bad_arguments_name_the_argument() -> None:
    A, X = problems((), 4, torch.float32, "cpu")
    buf = torch.zeros_like(X)
    for bad in (-1.0, math.nan, "1e-6"):
        with pytest.raises(InputError, match="stop_loss"):
            ops.inverse_momentum_run(A, X, buf, "right", 0.3, 0.8, 5, started=False, stop_loss=bad)
    batch_A, batch_X = problems((3,), 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="stop_loss tests one problem.*batch of 3"):
        ops.inverse_momentum_run(batch_A, batch_X, torch.zeros_like(batch_X), "right", 0.3, 0.8, 5, started=False,
                                 stop_loss=1e-6)
    with pytest.raises(ValueError, match="stop_loss tests one problem.*batch of 3"):
        ops.inverse_adam_run(batch_A, batch_X, torch.zeros_like(batch_X), torch.zeros_like(batch_X), "right",
                             torch.full((5,), 0.1, dtype=torch.float64), stop_loss=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.8, True)])
def test_svd_run_matches_torch_sgd_with_the_sign_fix(device: str, dtype: torch.dtype, momentum: float,
                                                      nesterov: bool) -> None:
    M, U, s, V = svd_start(dtype, device)
    V[:, 0] = -V[:, 0]  # a column the sign fix has to turn round
    rates = [0.3 * 0.97**k for k in range(40)]
    expected_losses, expected = svd_reference(M, U, s, V, rates, (0.01, 0.02), momentum, nesterov)
    buffers = tuple(torch.zeros_like(t) for t in (U, s, V))
    losses = ops.svd_sgd_run(M, U, s, V, buffers, torch.tensor(rates, dtype=torch.float64), weight_u=0.01,
                             weight_v=0.02, momentum=momentum, nesterov=nesterov)
    torch.testing.assert_close(losses, torch.tensor(expected_losses, dtype=torch.float64, device=device), **TOL[dtype])
    for got, want in zip((U, s, V), expected, strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_svd_run_in_one_call_equals_step_by_step_bitwise() -> None:
    M, U, s, V = svd_start(torch.float32, "cpu")
    twins = [t.clone() for t in (U, s, V)]
    buffers = tuple(torch.zeros_like(t) for t in (U, s, V))
    twin_buffers = tuple(torch.zeros_like(t) for t in (U, s, V))
    rates = torch.linspace(0.3, 0.05, 50, dtype=torch.float64)
    settings = {"weight_u": 0.01, "weight_v": 0.01, "momentum": 0.9}
    whole = ops.svd_sgd_run(M, U, s, V, buffers, rates, **settings)
    first, single = math.nan, []
    for step in range(50):
        loss = ops.svd_sgd_run(M, *twins, twin_buffers, rates[step : step + 1], started=step > 0, first_loss=first,
                               **settings)
        first = float(loss[0]) if step == 0 else first
        single.append(float(loss[0]))
    assert whole.tolist() == single
    assert all(torch.equal(a, b) for a, b in zip((U, s, V, *buffers), (*twins, *twin_buffers), strict=True))


def test_svd_run_stops_after_the_step_that_diverges_and_names_bad_arguments() -> None:
    M, U, s, V = svd_start(torch.float64, "cpu")
    buffers = tuple(torch.zeros_like(t) for t in (U, s, V))
    losses = ops.svd_sgd_run(M, U, s, V, buffers, torch.full((500,), 50.0, dtype=torch.float64), weight_u=0.01,
                             weight_v=0.01, blow_up=1e3)
    assert 1 < len(losses) < 500 and float(losses[-1]) > 1e3 * float(losses[0])
    rates = torch.full((3,), 0.1, dtype=torch.float64)
    with pytest.raises(ShapeError, match="m, n <= 16"):
        big = torch.zeros(17, 3, dtype=torch.float64)
        ops.svd_sgd_run(big, U, s, V, buffers, rates, weight_u=0.0, weight_v=0.0)
    with pytest.raises(ValueError, match="buf_v must have shape"):
        ops.svd_sgd_run(M, U, s, V, (buffers[0], buffers[1], buffers[2][:2]), rates, weight_u=0.0, weight_v=0.0)
    with pytest.raises(InputError, match="weight_u"):
        ops.svd_sgd_run(M, U, s, V, buffers, rates, weight_u=-1.0, weight_v=0.0)


def test_runs_bump_the_version_of_what_they_write_so_autograd_notices() -> None:
    A, X = problems((), 4, torch.float64, "cpu")
    buf, m, v = (torch.zeros_like(X) for _ in range(3))
    rates = torch.full((3,), 0.01, dtype=torch.float64)
    svd = [t.clone() for t in (X, X[0], X)]
    masked = (torch.zeros(4, 4, dtype=torch.float64), torch.ones(4, 4, dtype=torch.float64))
    runs = {
        "inverse_momentum_run": ((X, buf), lambda: ops.inverse_momentum_run(A, X, buf, "right", 0.1, 0.9, 3,
                                                                             started=False)),
        "inverse_adam_run": ((X, m, v), lambda: ops.inverse_adam_run(A, X, m, v, "right", rates)),
        "svd_sgd_run": (tuple(svd), lambda: ops.svd_sgd_run(A, *svd, tuple(torch.zeros_like(t) for t in svd), rates,
                                                            weight_u=0.01, weight_v=0.01)),
        "masked_sgd_run": (masked, lambda: ops.masked_sgd_run(A, (A > 1).double(), A[:, :2].contiguous(),
                                                              A[:, :2].contiguous(), *masked, rates, hops=1)),
    }
    for name, (written, run) in runs.items():
        before = [t._version for t in written]
        run()
        assert all(t._version > b for t, b in zip(written, before, strict=True)), name
    # a tensor saved for a backward, then changed by a run: autograd refuses it
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    saved = X.clone()
    total = (weight * saved).sum()
    ops.inverse_momentum_run(A, saved, torch.zeros_like(saved), "right", 0.1, 0.9, 2, started=False)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()

