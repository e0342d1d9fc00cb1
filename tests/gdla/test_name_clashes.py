"""One rule for a name registered twice, on every path, and each plugin's warnings filters kept to itself.

The rule (``gdla/registry.py``): a name registered by two plugins (gdla and a third party, or two
third parties) is a :class:`DuplicateNameError` wherever it is used by its bare name, naming both
distributions and entry points and how to choose (``DIST:NAME``, or uninstalling one); the
verdict does not depend on what was looked up or listed before. Third parties here are fake entry
points (name, value, distribution and the plugin object ``load()`` returns) next to gdla's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pytest

import gdla
from gdla import registry as registry_module
from gdla.errors import DuplicateNameError, PluginWarning
from gdla_plugins.optimizers.newton_schulz import NewtonSchulz
from gdla_plugins.problems.inverse import InverseProblem


@dataclass(frozen=True)
class FakeDistribution:
    name: str
    version: str = "1.0"


@dataclass(frozen=True)
class FakeEntryPoint:
    """What the registry reads of an entry point: its name, value, distribution, and ``load()``."""

    name: str
    dist: FakeDistribution
    plugin: Any

    @property
    def value(self) -> str:
        return f"{self.dist.name.replace('-', '_')}.plugin"

    def load(self) -> Any:
        return self.plugin


def plugin_of(*classes: type, body: Callable[[], None] | None = None) -> type:
    """A plugin object registering ``classes`` (and running ``body`` first, as a module's import would)."""
    problems = [cls for cls in classes if issubclass(cls, gdla.Problem)]
    optimizers = [cls for cls in classes if issubclass(cls, gdla.Optimizer)]

    @gdla.hookimpl
    def register_problems(register: Any) -> None:
        for cls in problems:
            register(cls)

    @gdla.hookimpl
    def register_optimizers(register: Any) -> None:
        for cls in optimizers:
            register(cls)

    return type(
        "Plugin",
        (),
        {
            "register_problems": staticmethod(register_problems),
            "register_optimizers": staticmethod(register_optimizers),
        },
    )


def third_party(dist: str, entry_point: str, *classes: type) -> FakeEntryPoint:
    return FakeEntryPoint(entry_point, FakeDistribution(dist), plugin_of(*classes))


# the load's own warning of a clash: what these tests check is the verdict of each path
pytestmark = pytest.mark.filterwarnings("ignore:.*is registered twice:gdla.errors.PluginWarning")


class ThirdInverse(InverseProblem):
    """A third party's problem registered as 'inverse', gdla's name."""


class ThirdNewtonSchulz(NewtonSchulz):
    """A third party's optimizer registered as 'newton-schulz'."""


class Twin(InverseProblem):
    name = "twin"


def installed(*extra: FakeEntryPoint) -> registry_module.Registry:
    """A fresh registry over gdla's own entry points and ``extra``."""
    return registry_module.Registry(entry_points=lambda: [*metadata.entry_points(group="gdla"), *extra])


def verdict(call: Callable[[], Any]) -> str:
    """What ``call`` gives: the class it returns or the error it raises (PluginWarnings recorded, not raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        try:
            return f"returns {call().__qualname__}"
        except DuplicateNameError as exc:
            return f"DuplicateNameError: {exc}"


CLASHES = {
    "gdla vs a third party": ([third_party("other-dist", "other", ThirdInverse)], "problem", "inverse"),
    "two third parties": (
        [third_party("first-dist", "one", Twin), third_party("second-dist", "two", Twin)],
        "problem",
        "twin",
    ),
    "an optimizer": ([third_party("other-dist", "ns", ThirdNewtonSchulz)], "optimizer", "newton-schulz"),
}


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_a_lookup_gives_the_same_error_before_and_after_a_listing(case: str) -> None:
    extra, kind, name = CLASHES[case]
    reg = installed(*extra)
    before = verdict(lambda: reg.entry(kind, name).obj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        listed = reg.names(kind)
    after = verdict(lambda: reg.entry(kind, name).obj)
    assert before == after
    assert name in listed
    assert before.startswith(f"DuplicateNameError: {kind} name {name!r} is registered twice")
    dists = sorted({entry.plugin for entry in reg.entries(kind) if entry.name == name})
    assert len(dists) == 2
    for dist in dists:  # each distribution, its entry point and how to choose it
        assert f"by {dist} " in before and f"'{dist}:{name}'" in before
    assert "entry point" in before and "or uninstall one" in before


def test_the_error_names_both_entry_points() -> None:
    reg = installed(third_party("other-dist", "sneaky", ThirdInverse))
    text = verdict(lambda: reg.entry("problem", "inverse").obj)
    assert "gdla 0.1.0, entry point 'inverse' (gdla_plugins.problems.inverse.InverseProblem)" in text
    assert f"other-dist 1.0, entry point 'sneaky' ({ThirdInverse.__module__}.ThirdInverse)" in text


def test_dist_colon_name_chooses_one() -> None:
    reg = installed(third_party("other-dist", "other", ThirdInverse))
    assert reg.entry("problem", "gdla:inverse").obj is InverseProblem
    assert verdict(lambda: reg.entry("problem", "other-dist:inverse").obj) == "returns ThirdInverse"
    with pytest.raises(gdla.UnknownNameError, match="'nobody' registers no problem 'inverse'.*gdla:inverse"):
        reg.entry("problem", "nobody:inverse")


def test_a_name_only_a_third_party_uses_is_not_a_clash() -> None:
    reg = installed(third_party("other-dist", "other", Twin))
    assert reg.entry("problem", "twin").obj is Twin  # loaded with the lookup of any name: no clash, no word
    assert reg.entry("problem", "inverse").obj is InverseProblem


def test_gdla_names_each_entry_point_after_what_its_module_registers() -> None:
    # what lets a lookup by name skip gdla's other modules and still see every clash
    own = {ep.name: ep.value for ep in metadata.entry_points(group="gdla") if ep.dist.name == "gdla"}
    reg = installed()
    for entry in reg.entries():
        assert entry.entry_point is not None and own.get(entry.name) == entry.entry_point[1], entry


def test_register_plugin_refuses_a_clash_naming_both() -> None:
    reg = installed()
    with pytest.raises(DuplicateNameError) as info:
        reg.register_plugin(plugin_of(ThirdInverse), name="mine", dist="my-dist")
    text = str(info.value)
    assert "problem name 'inverse' is registered twice" in text
    assert "gdla 0.1.0, entry point 'inverse'" in text and "my-dist 0" in text
    assert "unregister_plugin()" in text
    assert reg.entry("problem", "inverse").obj is InverseProblem  # nothing of the refused plugin stayed


@pytest.fixture
def clashing(monkeypatch: pytest.MonkeyPatch) -> registry_module.Registry:
    """The process-wide registry swapped for one where a third party also registers 'inverse' and 'newton-schulz'."""
    reg = installed(third_party("other-dist", "other", ThirdInverse, ThirdNewtonSchulz))
    monkeypatch.setattr(registry_module, "registry", reg)
    return reg


@pytest.mark.parametrize(
    "argv",
    [
        ["solve", "inverse"],
        ["solve", "inverse", "--optimizer", "newton-schulz"],
        ["solve", "inverse", "--optimizer", "cg"],
        ["solve", "sparse", "--optimizer", "newton-schulz"],
    ],
)
def test_every_command_line_path_gives_the_error(clashing: Any, cli: Any, argv: list[str]) -> None:
    code, out, err = cli(*argv)
    assert code == 1 and out == ""
    error = [line for line in err.splitlines() if line.startswith("gdla: error: ")]
    assert len(error) == 1 and "is registered twice" in error[0]
    assert "'gdla:" in error[0] and "'other-dist:" in error[0]


def test_the_command_line_chooses_with_dist_colon_name(clashing: Any, cli: Any) -> None:
    code, out, err = cli("solve", "gdla:inverse", "--optimizer", "gdla:newton-schulz")
    assert code == 0, err
    assert "inverse with gdla:newton-schulz" in out and "converged" in out


def test_the_listing_shows_both_and_says_how_to_choose(clashing: Any, cli: Any) -> None:
    code, out, err = cli("plugins")
    assert code == 0
    rows = [line.split()[:3] for line in out.splitlines()]
    assert ["problem", "inverse", "gdla"] in rows and ["problem", "inverse", "other-dist"] in rows
    assert "problem name 'inverse' is registered twice" in out and "'other-dist:inverse'" in out
    assert "optimizer name 'newton-schulz' is registered twice" in out
    code, out, err = cli("info")
    assert code == 0 and "clash: problem name 'inverse' is registered twice" in out


def test_auto_leaves_a_clashing_optimizer_out_with_a_warning(clashing: Any) -> None:
    with pytest.warns(PluginWarning) as record:
        result = gdla.solve(InverseProblem.example(), max_steps=50)
    assert result.settings["optimizer.method"] != "newton-schulz"
    words = [str(w.message) for w in record]
    assert any("'newton-schulz' is registered twice" in w and "left out of the ranking" in w for w in words), words


# -- isolation: a plugin's warnings filters --------------------------------------------------------
def _strict_filters() -> None:
    warnings.simplefilter("error")  # what a careless plugin does at import


def _warns_at_import() -> None:
    warnings.warn("a harmless warning at import", UserWarning, stacklevel=1)


class Loading:
    """An entry point whose ``load()`` runs ``body`` first, as a module's import would."""

    def __init__(self, name: str, dist: str, body: Callable[[], None], *classes: type) -> None:
        self.name, self.dist, self.body = name, FakeDistribution(dist), body
        self.value = f"{dist}.plugin"
        self.plugin = plugin_of(*classes)

    def load(self) -> Any:
        self.body()
        return self.plugin


class ProblemA(InverseProblem):
    name = "a-problem"


class ProblemB(InverseProblem):
    name = "b-problem"


def test_a_plugin_setting_warnings_to_errors_does_not_break_the_next_one() -> None:
    strict = Loading("a-strict", "a-dist", _strict_filters, ProblemA)
    warner = Loading("b-warner", "b-dist", _warns_at_import, ProblemB)
    reg = registry_module.Registry(entry_points=lambda: [strict, warner])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        names = reg.names("problem")
        assert warnings.filters == before, "a plugin's filters leaked out of its load"
    assert names == ["a-problem", "b-problem"]
    assert [str(w.message) for w in record] == ["a harmless warning at import"]
    assert reg.failures == []
