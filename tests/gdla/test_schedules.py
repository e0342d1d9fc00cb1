"""``gdla.schedules``: the learning rate each schedule gives, step by step, and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from gdla.errors import InputError
from gdla.schedules import SCHEDULES, advance, make_schedule, upcoming_rates


def plain_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)


def rates(name: str, steps: int, *, lr: float = 1.0, max_steps: int | None = None, **options) -> list[float]:
    """The learning rate in force for steps 1, 2, ..., ``steps + 1`` (the schedule steps after each update)."""
    optimizer = plain_optimizer(lr)
    scheduler = make_schedule(name, optimizer, max_steps=max_steps, **options)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def test_the_four_schedules() -> None:
    assert SCHEDULES == ("step", "multistep", "exponential", "cosine")


@pytest.mark.parametrize("name", [None, "none"])
def test_no_schedule(name: str | None) -> None:
    assert make_schedule(name, plain_optimizer()) is None


def test_options_without_a_schedule_are_refused() -> None:
    with pytest.raises(InputError, match=r"^schedule_options: given \['gamma'\] but no schedule was chosen"):
        make_schedule(None, plain_optimizer(), gamma=0.5)


def test_unknown_schedule_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as info:
        make_schedule("linear", plain_optimizer())
    message = str(info.value)
    assert message.startswith("schedule: expected one of")
    assert all(repr(name) in message for name in SCHEDULES) and "received 'linear'" in message


@pytest.mark.parametrize(
    ("name", "option", "accepted"),
    [
        ("step", "milestones", "['gamma', 'step_size']"),
        ("multistep", "gamma", "['factors', 'milestones']"),
        ("exponential", "T_max", "['gamma']"),
        ("cosine", "step_size", "['T_max', 'eta_min']"),
    ],
)
def test_unknown_option_lists_the_accepted_ones(name: str, option: str, accepted: str) -> None:
    with pytest.raises(InputError) as info:
        make_schedule(name, plain_optimizer(), **{option: 3})
    message = str(info.value)
    assert message.startswith("schedule_options:")
    assert accepted in message and f"['{option}']" in message


# -- the documented rates -------------------------------------------------------------------------------
def test_step_defaults_halve_every_quarter_of_max_steps() -> None:
    assert rates("step", 8, lr=0.8, max_steps=8) == pytest.approx([0.8 * 0.5 ** (t // 2) for t in range(9)])


def test_step_default_horizon_without_max_steps_is_ten_thousand() -> None:
    seen = rates("step", 2_500, lr=1.0)
    assert seen[2_499] == 1.0 and seen[2_500] == 0.5


def test_step_with_explicit_options() -> None:
    assert rates("step", 7, lr=0.3, step_size=3, gamma=0.1) == pytest.approx(
        [0.3, 0.3, 0.3, 0.03, 0.03, 0.03, 0.003, 0.003], rel=1e-12
    )


def test_multistep_defaults_reproduce_seed_003() -> None:
    # 0.05, then 0.025 from step 10,000 and 0.01 from step 100,000, read off the rule itself
    optimizer = plain_optimizer(0.05)
    scheduler = make_schedule("multistep", optimizer)
    factor = scheduler.lr_lambdas[0]
    expected = {0: 0.05, 1: 0.05, 9_999: 0.05, 10_000: 0.025, 50_000: 0.025, 99_999: 0.025, 100_000: 0.01, 10**7: 0.01}
    assert {t: 0.05 * factor(t) for t in expected} == pytest.approx(expected, rel=1e-15)


def test_multistep_stepped_with_near_milestones() -> None:
    seen = rates("multistep", 6, lr=0.05, milestones=[2, 5], factors=[0.5, 0.2])
    assert seen == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.025, 0.01, 0.01], rel=1e-15)


def test_multistep_accepts_tuples_and_no_milestones() -> None:
    assert rates("multistep", 3, lr=0.4, milestones=(1,), factors=(0.25,)) == pytest.approx([0.4, 0.1, 0.1, 0.1])
    assert rates("multistep", 3, lr=0.4, milestones=[], factors=[]) == [0.4] * 4


def test_exponential_default_gamma() -> None:
    assert rates("exponential", 5, lr=2.0) == pytest.approx([2.0 * 0.999**t for t in range(6)], rel=1e-12)


def test_exponential_with_gamma() -> None:
    assert rates("exponential", 4, lr=1.0, gamma=0.5) == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625], rel=1e-12)


def test_cosine_decays_to_eta_min_over_max_steps() -> None:
    seen = rates("cosine", 10, lr=1.0, max_steps=10, eta_min=0.1)
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[-1] == pytest.approx(0.1, abs=1e-12)


def test_cosine_t_max_overrides_max_steps() -> None:
    seen = rates("cosine", 4, lr=1.0, max_steps=1_000, T_max=4)
    assert seen == pytest.approx([(1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)], abs=1e-12)


# -- argument checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("step", {"step_size": 0}, r"^step_size: expected an integer >= 1, received 0"),
        ("step", {"step_size": 2.5}, r"^step_size: expected an integer, received 2.5"),
        ("step", {"gamma": 0}, r"^gamma: expected a number > 0, received 0"),
        ("exponential", {"gamma": -0.5}, r"^gamma: expected a number > 0, received -0.5"),
        ("exponential", {"gamma": float("nan")}, r"^gamma: expected a finite number, received nan"),
        ("cosine", {"T_max": 0}, r"^T_max: expected an integer >= 1, received 0"),
        ("cosine", {"eta_min": -1.0}, r"^eta_min: expected a number >= 0, received -1.0"),
        (
            "multistep",
            {"milestones": [10], "factors": [0.5, 0.2]},
            r"^factors: expected one factor per milestone \(1\)",
        ),
        ("multistep", {"milestones": [20, 10], "factors": [0.5, 0.2]}, r"^milestones: expected increasing steps"),
        ("multistep", {"milestones": [0], "factors": [0.5]}, r"^milestones: expected an integer >= 1, received 0"),
        ("multistep", {"milestones": [1.5], "factors": [0.5]}, r"^milestones: expected an integer, received 1.5"),
        ("multistep", {"milestones": [5], "factors": [0]}, r"^factors: expected a number > 0, received 0"),
    ],
)
def test_invalid_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_schedule(name, plain_optimizer(), **options)


# -- found while testing: reported to the owner of gdla/schedules.py --------------------------------


@pytest.mark.parametrize("options", [{"milestones": 5}, {"milestones": [3], "factors": 0.5}])
def test_non_sequence_milestones_raise_input_error(options: dict) -> None:
    with pytest.raises(InputError, match=r"^(milestones|factors): expected"):
        make_schedule("multistep", plain_optimizer(), **options)


def test_cosine_stays_at_eta_min_after_t_max() -> None:
    seen = rates("cosine", 8, lr=1.0, T_max=4, eta_min=0.0)
    assert max(seen[4:]) == pytest.approx(0.0, abs=1e-12)


def test_cosine_refuses_eta_min_above_lr() -> None:
    with pytest.raises(InputError, match=r"^eta_min:"):
        make_schedule("cosine", plain_optimizer(1.0), eta_min=5.0)


def test_multistep_refuses_repeated_milestones() -> None:
    with pytest.raises(InputError, match=r"^milestones: expected increasing steps"):
        make_schedule("multistep", plain_optimizer(), milestones=[5, 5], factors=[0.5, 0.2])


REPLAYED = [
    ("step", {"step_size": 7, "gamma": 0.5}),
    ("multistep", {"milestones": [5, 13], "factors": [0.5, 0.2]}),
    ("exponential", {"gamma": 0.97}),
    ("cosine", {"T_max": 20}),
    (None, {}),
]


def _stepped(name: str | None, options: dict) -> tuple[torch.optim.Optimizer, object]:
    optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.05)
    return optimizer, make_schedule(name, optimizer, max_steps=100, **options)


@pytest.mark.parametrize(("name", "options"), REPLAYED)
def test_upcoming_rates_are_the_bits_stepping_gives_and_advance_leaves_the_same_state(name, options) -> None:
    stepped, scheduler = _stepped(name, options)
    replayed, twin = _stepped(name, options)
    for optimizer, schedule in ((stepped, scheduler), (replayed, twin)):  # both mid-run first
        for _ in range(3):
            optimizer.step()
            if schedule is not None:
                schedule.step()
    seen = []
    for _ in range(30):
        seen.append(stepped.param_groups[0]["lr"])
        stepped.step()
        if scheduler is not None:
            scheduler.step()
    rates = upcoming_rates(twin, replayed.param_groups[0]["lr"], 30)
    assert rates.tolist()[:30] == seen  # exactly: a whole-run kernel takes the loop's steps
    advance(twin, rates, 30)
    assert replayed.param_groups[0]["lr"] == stepped.param_groups[0]["lr"] == rates[30]
    if scheduler is not None:
        assert twin.state_dict() == scheduler.state_dict()
