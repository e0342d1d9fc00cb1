"""Declared options: name checks with a suggestion, resolving given values against the schema, the shared
validators, and a JSON-ready description."""

from __future__ import annotations

import json
import math

import pytest

import gdla
from gdla.errors import InputError
from gdla.options import (
    Option,
    check_names,
    choice,
    count,
    describe,
    flag,
    integer,
    optional,
    optional_count,
    resolve,
)
from gdla.validation import check_positive

DECLARED = {"momentum": Option(default=0.9, doc="heavy-ball factor"), "nesterov": Option(default=False)}


def test_known_names_pass_and_undeclared_owners_accept_anything() -> None:
    check_names("optimizer", "sgd", DECLARED, ["momentum", "nesterov"])
    check_names("optimizer", "old-plugin", {}, ["anything"])


def test_an_unknown_name_suggests_the_closest() -> None:
    expected = r"momentun: optimizer 'sgd' has no option 'momentun' \(did you mean 'momentum'\?\)"
    with pytest.raises(InputError, match=expected):
        check_names("optimizer", "sgd", DECLARED, ["momentun"])
    with pytest.raises(InputError, match="its options: momentum, nesterov$"):
        check_names("optimizer", "sgd", DECLARED, ["zzz"])


def test_describe_is_json_ready() -> None:
    described = describe({**DECLARED, "tol": Option(default=math.inf), "pair": Option(default=(0.9, 0.99))})
    assert [d["name"] for d in described] == ["momentum", "nesterov", "pair", "tol"]
    assert described[2]["default"] == [0.9, 0.99] and described[3]["default"] == "inf"
    json.dumps(described)


def test_every_builtin_declares_what_its_constructor_accepts() -> None:
    for name in gdla.problems():
        assert gdla.get_problem(name).options, f"problem {name!r} declares no options"
    for name in gdla.optimizers():
        if name != "auto":  # auto passes its options on to the method it picks
            assert gdla.get_optimizer(name).options, f"optimizer {name!r} declares no options"


CHECKED = {
    "momentum": Option(check_positive, 0.9),
    "nesterov": Option(flag, False),
    "restart": Option(optional_count, None),
}


def test_resolve_fills_defaults_and_checks_every_value() -> None:
    assert resolve("optimizer", "sgd", CHECKED, {}) == {"momentum": 0.9, "nesterov": False, "restart": None}
    assert resolve("optimizer", "sgd", CHECKED, {"momentum": 2, "restart": 5}) == {
        "momentum": 2.0,
        "nesterov": False,
        "restart": 5,
    }
    with pytest.raises(InputError, match=r"^nesterov: expected True or False, received 1$"):
        resolve("optimizer", "sgd", CHECKED, {"nesterov": 1})
    with pytest.raises(InputError, match=r"^momentum: expected a number > 0"):
        resolve("optimizer", "sgd", CHECKED, {"momentum": -1.0})


def test_resolve_refuses_unknown_names_with_check_names_message() -> None:
    with pytest.raises(InputError) as info:
        resolve("optimizer", "sgd", CHECKED, {"restrat": 2})
    assert str(info.value) == (
        "restrat: optimizer 'sgd' has no option 'restrat' (did you mean 'restart'?); "
        "its options: momentum, nesterov, restart"
    )


def test_an_undeclared_schema_accepts_whatever_is_given() -> None:
    given = {"anything": object(), "tolerance": 3}
    resolved = resolve("optimizer", "old-plugin", {}, given)
    assert resolved == given and resolved is not given


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (count, 3, 3),
        (optional_count, None, None),
        (optional_count, 2, 2),
        (integer(2), 2, 2),
        (choice("a", None), None, None),
        (optional(check_positive), None, None),
        (optional(check_positive), 2, 2.0),
        (flag, True, True),
    ],
)
def test_shared_validators_accept(check, value, expected) -> None:
    assert check(value, "x") == expected


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (count, 0, "x: expected an integer >= 1, received 0"),
        (count, 2.5, "x: expected an integer, received 2.5"),
        (optional_count, 0, "x: expected None or an integer >= 1, received 0"),
        (optional_count, True, "x: expected None or an integer >= 1, received True"),
        (integer(2), 1, "x: expected an integer >= 2, received 1"),
        (choice("a", None), "b", "x: expected one of 'a', None, received 'b'"),
        (optional(check_positive), 0, "x: expected a number > 0, received 0"),
        (flag, 0, "x: expected True or False, received 0"),
    ],
)
def test_shared_validators_refuse_naming_the_option(check, value, message) -> None:
    with pytest.raises(InputError) as info:
        check(value, "x")
    assert str(info.value) == message
