"""Declared options: name checks with a suggestion, and a JSON-ready description."""

from __future__ import annotations

import json
import math

import pytest

import gdla
from gdla.errors import InputError
from gdla.options import Option, check_names, describe

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
