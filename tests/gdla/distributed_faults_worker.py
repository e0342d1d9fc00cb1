"""One rank of ``test_distributed_faults.py``: runs every fault scenario in order and saves what it saw.

Started twice (``RANK`` 0 and 1, ``WORLD_SIZE`` 2, ``MASTER_ADDR``/``MASTER_PORT`` of a free local
port) by the test; ``python distributed_faults_worker.py OUT TIMEOUT``. The healthy scenarios come
first (an agreed error leaves the group usable); the last two break a group for good: a rank that
stalls past the group's timeout, then a rank that exits (on a second group, made at the start).
``failing_advance`` is also the test's name for the same injected failure in one process.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

import gdla
from gdla.distributed import Sharding
from gdla_plugins.problems.inverse import InverseProblem

out, timeout = sys.argv[1], float(sys.argv[2])
wait = datetime.timedelta(seconds=timeout)
dist.init_process_group("gloo", timeout=wait)
# for the last scenario (the default group is gone by then); a longer timeout: a closed connection is seen at once
spare = dist.new_group(backend="gloo", timeout=3 * wait)
rank = dist.get_rank()
saved: dict[str, Any] = {}


def matrices() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(5, 4, 4, generator=g, dtype=torch.float64)


def outcome(run: Any) -> dict[str, Any]:
    """What a call did on this rank: its result's steps and stop reason, or its error's type and message."""
    began = time.monotonic()
    try:
        result = run()
        return {"steps": result.steps, "stop": result.stop_reason}
    except BaseException as exc:  # KeyboardInterrupt included: a scenario raises it on purpose
        return {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - began}


def solve(matrices: torch.Tensor, **options: Any) -> Any:
    return gdla.solve(InverseProblem(matrices), distributed=True, **options)


# 1. the optimizer's step raises on rank 1 (its 4th call of advance)
Momentum = gdla.get_optimizer("momentum")
advance = Momentum.advance


def failing_advance(self: Any, steps: int, tol: float) -> Any:
    self.calls = getattr(self, "calls", 0) + 1
    if self.calls == 4:
        raise ValueError("injected failure in advance")
    return advance(self, steps, tol)


if rank == 1:
    Momentum.advance = failing_advance
saved["advance_raises"] = outcome(lambda: solve(matrices(), optimizer="momentum", lr=0.5, max_steps=20, tol=0))
Momentum.advance = advance


# 2. a callback raises on rank 0 at step 2 (with the residual test: two agreements a step)
def callback_raising(step: int, loss: float, params: Any) -> bool:
    if rank == 0 and step == 2:
        raise RuntimeError("injected failure in the callback")
    return False


saved["callback_raises"] = outcome(
    lambda: solve(matrices(), optimizer="momentum", lr=0.5, max_steps=20, tol=1e-12, callback=callback_raising)
)


# 3. Ctrl-C on rank 1 only, in its callback at step 3
def interrupted(step: int, loss: float, params: Any) -> bool:
    if rank == 1 and step == 3:
        raise KeyboardInterrupt
    return False


saved["interrupt"] = outcome(
    lambda: solve(matrices(), optimizer="momentum", lr=0.5, max_steps=20, callback=interrupted)
)

# 4. one member (the last: rank 1's) diverges; 5. rank 1's members converge later than rank 0's
diverging = matrices()
diverging[4] *= 10
saved["diverges"] = outcome(lambda: solve(diverging, optimizer="momentum", lr=0.5, max_steps=60, tol=1e-10))
slow = matrices()
slow[3:, :, 3] *= 0.02
saved["converges"] = outcome(lambda: solve(slow, optimizer="newton-schulz", max_steps=500, tol=1e-8))

# 6. ranks that pass different settings (rank 1: another tol and a callback)
different = {"tol": 1e-6, "callback": lambda step, loss, params: False} if rank == 1 else {}
saved["settings"] = outcome(lambda: solve(matrices(), optimizer="newton-schulz", **different))

# 6b. rank 1's set-up fails after its Sharding was built (an option its method refuses), 6c. before it (lr < 0)
refused = {"momentum": 5.0} if rank == 1 else {}
saved["setup_fails"] = outcome(lambda: solve(matrices(), optimizer="momentum", lr=0.5, max_steps=5, **refused))
negative = {"lr": -1.0} if rank == 1 else {"lr": 0.5}
saved["plan_fails"] = outcome(lambda: solve(matrices(), optimizer="momentum", max_steps=5, **negative))

# 7. after all that the group still works
saved["healthy"] = outcome(lambda: solve(matrices(), optimizer="newton-schulz"))
sharding = Sharding(InverseProblem(matrices()), group=spare)  # for 9, while both ranks are here


# 8. rank 1 stalls in its callback at step 3 past the group's timeout (alive, not arriving)
def stalling(step: int, loss: float, params: Any) -> bool:
    if rank == 1 and step == 3:
        time.sleep(timeout + 1.5)
    return False


saved["stalls"] = outcome(lambda: solve(matrices(), optimizer="momentum", lr=0.5, max_steps=20, callback=stalling))

# 9. rank 1 exits while rank 0 waits in an agreement (on the second group)
if rank == 1:
    with open(f"{out}/rank1.json", "w") as file:
        json.dump(saved, file)
    os._exit(0)
saved["exits"] = outcome(lambda: sharding.agree(7, loss=1.0))
with open(f"{out}/rank0.json", "w") as file:
    json.dump(saved, file)
os._exit(0)  # the groups are broken: nothing to tear down
