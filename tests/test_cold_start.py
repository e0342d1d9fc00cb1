"""A fresh process's first solve imports only what its method uses: no ``torch._dynamo``.

``torch.optim`` imports ``torch._dynamo`` (1.5-2.5 s) in the guards around its constructor,
``step``, ``state_dict`` and ``load_state_dict``, and ``torch.func``'s reverse mode on its first
call; gdla's optimizers step around both (``gdla_plugins.optimizers.torch_optim.EagerOptimizer``,
``levenberg_marquardt.jacobian``). The tests read one fresh interpreter (a subprocess), since the
module cache of this one is shared with every other test. No timings are asserted here:
``benchmarks/notebooks.py`` records them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

METHODS = ["newton-schulz", "cg", "momentum", "sgd", "adam", "adagrad", "rmsprop", "lbfgs", "levenberg-marquardt",
           "auto"]


#: One fresh interpreter runs the three parts in this order; each test reads its own part. Importing is
#: one-way (a module once loaded stays in ``sys.modules``), so a module absent after a later part was
#: absent after every earlier one: sharing the process checks what three fresh processes would.
COMMAND = """
def command_part():
    import io
    from contextlib import redirect_stdout
    from gdla.cli import main
    with redirect_stdout(io.StringIO()) as text:
        code = main(["solve", "inverse", "--size", "8", "--optimizer", "adam"])
    return [code, "torch._dynamo" in sys.modules, "sympy" in sys.modules, len(text.getvalue()) > 0]
"""

SOLVES = f"""
def solves_part():
    import warnings
    import torch, gdla
    loaded = {{}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in {METHODS!r}:
            result = gdla.solve("inverse", optimizer=method, max_steps=30, seed=0)
            loaded[method] = ["torch._dynamo" in sys.modules, result.steps]
        result = gdla.solve("svd", optimizer="riemannian-svd", max_steps=5, seed=0)
        loaded["riemannian-svd"] = ["torch._dynamo" in sys.modules, result.steps]
    return loaded
"""

EAGER = """
def eager_part():
    import torch
    from gdla_plugins.optimizers import torch_optim as T
    from gdla_plugins.optimizers.momentum import SeedMomentum

    CASES = [
        (T.EagerSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
        (T.EagerAdam, torch.optim.Adam, dict(lr=0.05, amsgrad=True, weight_decay=0.01)),
        (T.EagerAdagrad, torch.optim.Adagrad, dict(lr=0.3)),
        (T.EagerRMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
        (T.EagerLBFGS, torch.optim.LBFGS, dict(lr=1.0, line_search_fn="strong_wolfe", history_size=3)),
    ]
    A = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(cls, options):
        x = torch.full((6, 6), 0.1, dtype=torch.float64, requires_grad=True)
        opt = cls([x], **options)

        def closure():
            opt.zero_grad()
            loss = ((x @ A - torch.eye(6, dtype=torch.float64)) ** 2).mean()
            loss.backward()
            return loss

        losses = [float(opt.step(closure)) for _ in range(5)]
        state = opt.state_dict()
        again = cls([x.detach().clone().requires_grad_(True)], **options)
        again.load_state_dict(state)
        return x.detach(), losses, state, again.state_dict()

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(p, q) for p, q in zip(a, b))
        return a == b

    eager = [run(mine, options) for mine, _, options in CASES]
    before = "torch._dynamo" in sys.modules
    theirs = [run(torch_class, options) for _, torch_class, options in CASES]
    after = "torch._dynamo" in sys.modules  # torch's own classes load it
    guarded = [run(mine, options) for mine, _, options in CASES]
    seed = SeedMomentum([torch.zeros(2, requires_grad=True)], lr=0.5)
    return {
        "dynamo_before": before, "dynamo_after": after,
        "same": [same(a, b) for a, b in zip(eager, theirs)],
        "same_guarded": [same(a, b) for a, b in zip(guarded, theirs)],
        "round_trip": [same(e[2], e[3]) for e in eager],
        "is_torch_class": [isinstance(m([torch.zeros(1, requires_grad=True)], **o), t) for m, t, o in CASES],
        "seed_momentum": [isinstance(seed, T.EagerOptimizer), seed.param_groups[0]["lr"]],
    }
"""

RUN_ALL = "\nprint(json.dumps({'command': command_part(), 'solves': solves_part(), 'eager': eager_part()}))\n"


@pytest.fixture(scope="module")
def fresh() -> dict:
    """The facts of one fresh interpreter that ran the command, then the first solves, then the optimizers."""
    script = "import json, sys\n" + COMMAND + SOLVES + EAGER + RUN_ALL
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_solves_import_no_dynamo(fresh: dict) -> None:
    facts = fresh["solves"]
    assert {method: facts[method][0] for method in facts} == dict.fromkeys([*METHODS, "riemannian-svd"], False)
    assert all(steps >= 1 for _, steps in facts.values())


def test_the_command_imports_no_dynamo(fresh: dict) -> None:
    assert fresh["command"] == [0, False, False, True]


def test_eager_torch_optimizers_take_torch_optims_steps_bit_for_bit(fresh: dict) -> None:
    """Each ``Eager*`` class against its ``torch.optim`` class, before and after ``torch._dynamo`` is loaded:
    the same parameters and the same ``state_dict`` after five steps."""
    facts = fresh["eager"]
    assert facts["dynamo_before"] is False
    assert facts["dynamo_after"] is True
    assert facts["same"] == [True] * 5
    assert facts["same_guarded"] == [True] * 5
    assert facts["round_trip"] == [True] * 5
    assert facts["is_torch_class"] == [True] * 5
    assert facts["seed_momentum"] == [True, 0.5]
