"""The GPU targets of the fused kernels, measured against floors taken on the same device.

    python benchmarks/gpu_targets.py >> benchmarks/results/gpu-<device>.md

1. One inverse-MSE loss-and-gradient step at n = 8192 (float32) against its floor: the two GEMMs
   it cannot avoid (``A @ M`` and ``A^T @ R``), timed alone.
2. One step on a batch of 10^6 4x4 problems (float32), fused against the bmm-based autograd code;
   and the batched Newton-Schulz solve of the same batch against ``torch.linalg.inv``.
3. The fused masked momentum update against the device's measured copy bandwidth.

Times are medians of CUDA-event timings after warm-up. Prints markdown; exits non-zero on error.
``--device cpu`` with small sizes runs the same code on a CPU (to check the script itself).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import gdla.ops as ops

DEVICE = torch.device("cuda")


def median_seconds(fn: Callable[[], object], warmup: int = 3, repeat: int = 15) -> float:
    """Median wall time of ``fn``: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE.type != "cuda":
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    torch.cuda.synchronize()
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def eager_inverse_step(A: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = M.detach().requires_grad_(True)
    P = A @ leaf
    loss = (P - torch.eye(P.shape[-1], device=P.device, dtype=P.dtype)).square().mean(dim=(-2, -1)).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((value - reference).double()) / torch.linalg.vector_norm(reference.double()))


def large_inverse_step(n: int) -> list[str]:
    A = torch.randn(n, n, device=DEVICE) / n**0.5 + torch.eye(n, device=DEVICE)
    M = A.mT.contiguous() / float(torch.linalg.matrix_norm(A).square())
    R = torch.randn(n, n, device=DEVICE)
    floor = median_seconds(lambda: (torch.mm(A, M), torch.mm(A.mT, R)))
    fused = median_seconds(lambda: ops.inverse_mse_and_grad(A, M, "right"))
    eager = median_seconds(lambda: eager_inverse_step(A, M))
    error = relative_error(ops.inverse_mse_and_grad(A, M, "right")[1], eager_inverse_step(A, M)[1])
    return [
        f"## 1. inverse-MSE step, n = {n}, float32 (TF32 matmul: {torch.backends.cuda.matmul.allow_tf32})",
        "",
        "| what | median | ratio to the two-GEMM floor |",
        "| --- | --- | --- |",
        f"| two GEMMs alone (floor) | {floor * 1e3:.3f} ms | 1.000 |",
        f"| fused inverse_mse_and_grad | {fused * 1e3:.3f} ms | {fused / floor:.3f} |",
        f"| eager autograd | {eager * 1e3:.3f} ms | {eager / floor:.3f} |",
        "",
        f"Relative difference of the fused gradient from the eager one: {error:.2e}.",
        "",
    ]


def tiny_batch(batch: int) -> list[str]:
    Q1 = torch.linalg.qr(torch.randn(batch, 4, 4, device=DEVICE)).Q
    Q2 = torch.linalg.qr(torch.randn(batch, 4, 4, device=DEVICE)).Q
    A = (Q1 * torch.empty(batch, 1, 4, device=DEVICE).uniform_(0.5, 2.0)) @ Q2
    M = A.mT / torch.linalg.matrix_norm(A).square()[:, None, None]
    fused = median_seconds(lambda: ops.inverse_mse_and_grad(A, M, "right"))
    eager = median_seconds(lambda: eager_inverse_step(A, M))
    error = relative_error(ops.inverse_mse_and_grad(A, M, "right")[1], eager_inverse_step(A, M)[1])
    solve = median_seconds(lambda: ops.small_inverse_newton_schulz(A, None, 100, 1e-6))
    inverse = median_seconds(lambda: torch.linalg.inv(A))
    X, steps = ops.small_inverse_newton_schulz(A, None, 100, 1e-6)
    residual = torch.linalg.matrix_norm(A.double() @ X.double() - torch.eye(4, device=DEVICE, dtype=torch.float64)) / 2
    return [
        f"## 2. a batch of {batch:,} 4x4 problems, float32",
        "",
        "| what | median | ratio |",
        "| --- | --- | --- |",
        f"| eager autograd step (bmm) | {eager * 1e3:.3f} ms | 1.000 |",
        f"| fused inverse_mse_and_grad step | {fused * 1e3:.3f} ms | {fused / eager:.3f} |",
        f"| torch.linalg.inv | {inverse * 1e3:.3f} ms | 1.000 |",
        f"| small_inverse_newton_schulz to 1e-6 | {solve * 1e3:.3f} ms | {solve / inverse:.3f} |",
        "",
        f"Step gradient relative difference {error:.2e}; Newton-Schulz: max steps {int(steps.max())}, "
        f"max residual {float(residual.max()):.2e}, fraction <= 1e-6: {float((residual <= 1e-6).double().mean()):.4f}.",
        "",
    ]


def masked_update(elements: int) -> list[str]:
    U, G, buf, src = (torch.randn(elements, device=DEVICE) for _ in range(4))
    omega = (torch.rand(elements, device=DEVICE) > 0.5).float()
    dst = torch.empty_like(src)
    copy = median_seconds(lambda: dst.copy_(src))
    bandwidth = 2 * 4 * elements / copy  # one read and one write per element
    fused = median_seconds(lambda: ops.masked_update_(U, omega, G, 1e-3, 0.9, buf))

    def eager() -> None:
        buf.mul_(0.9).add_(omega * G)
        U.sub_(1e-3 * buf)

    eager_time = median_seconds(eager)
    moved = 6 * 4 * elements  # reads U, omega, G, buf; writes U, buf
    return [
        f"## 3. masked momentum update, {elements:,} float32 elements",
        "",
        "| what | median | effective bandwidth | fraction of copy bandwidth |",
        "| --- | --- | --- | --- |",
        f"| copy_ (measured bandwidth) | {copy * 1e3:.3f} ms | {bandwidth / 1e9:.0f} GB/s | 1.000 |",
        f"| fused masked_update_ | {fused * 1e3:.3f} ms | {moved / fused / 1e9:.0f} GB/s "
        f"| {moved / fused / bandwidth:.3f} |",
        f"| eager (4 kernels) | {eager_time * 1e3:.3f} ms | {moved / eager_time / 1e9:.0f} GB/s "
        f"| {moved / eager_time / bandwidth:.3f} |",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--elements", type=int, default=1 << 27)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the script")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not (torch.cuda.is_available() and ops.has_cuda_kernels()):
        raise SystemExit("gpu_targets.py needs a CUDA device and gdla._C built with its CUDA kernels")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    lines = [f"# GPU targets on {name}", ""]
    lines += large_inverse_step(args.n) + tiny_batch(args.batch) + masked_update(args.elements)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
