"""The plugin registry: lazy loading, isolation of broken plugins, strict mode, names and sources.

Plugins here are real distributions: a ``*.dist-info`` folder (METADATA + entry_points.txt) and a
module written to ``tmp_path``, read back through ``importlib.metadata`` and fed to a fresh
``Registry``. Nothing touches the process-wide registry except the ``register_plugin`` tests.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch

import gdla
from gdla import registry as registry_module
from gdla.errors import DuplicateNameError, PluginError, PluginWarning, UnknownNameError

# A complete, minimal problem and optimizer, written into plugin modules below.
GOOD_CLASSES = """
import torch
import gdla


class Problem(gdla.Problem):
    name = "{problem}"
    summary = "x = c"

    def __init__(self, c=None):
        self.c = torch.ones(2, 2, dtype=torch.float64) if c is None else c

    @classmethod
    def example(cls, size=None, *, seed=0, dtype=torch.float64):
        return cls(torch.ones(size or 2, size or 2, dtype=dtype))

    dtype = property(lambda self: self.c.dtype)
    device = property(lambda self: self.c.device)

    def to(self, dtype=None, device=None):
        return type(self)(self.c.to(dtype=dtype or self.c.dtype, device=device or self.c.device))

    def init_params(self, generator):
        return {{"x": torch.zeros_like(self.c)}}

    def loss(self, params):
        return ((params["x"] - self.c) ** 2).sum() / 2

    def solution(self, params):
        return params["x"]

    def residual(self, params):
        return torch.linalg.norm(params["x"] - self.c) / torch.linalg.norm(self.c)

    def reference(self):
        return self.c

    def error(self, params):
        return self.residual(params)


class Optimizer(gdla.GradientOptimizer):
    name = "{optimizer}"
    summary = "plain gradient descent"

    def build(self, tensors, lr, **options):
        return torch.optim.SGD(tensors, lr=lr)
"""


def good_plugin(problem: str | None = None, optimizer: str | None = None) -> str:
    """Source of a plugin module registering a problem and/or an optimizer under these names."""
    source = GOOD_CLASSES.format(problem=problem or "unused-problem", optimizer=optimizer or "unused-optimizer")
    if problem:
        source += "\n@gdla.hookimpl\ndef register_problems(register):\n    register(Problem)\n"
    if optimizer:
        source += "\n@gdla.hookimpl\ndef register_optimizers(register):\n    register(Optimizer)\n"
    return source


BROKEN_PLUGINS = {
    # name: (module source, words the warning must contain)
    "sys-exit": ("import sys\nsys.exit(3)\n", ["import failed", "SystemExit with code 3"]),
    "loss-without-params": (
        GOOD_CLASSES.format(problem="p", optimizer="o").replace("def loss(self, params)", "def loss(self)")
        + "\n@gdla.hookimpl\ndef register_problems(register):\n    register(Problem)\n",
        ["Problem.loss(self)", "loss(self, params) takes the parameter dict"],
    ),
    "example-not-classmethod": (
        GOOD_CLASSES.format(problem="p", optimizer="o").replace(
            "    @classmethod\n    def example", "    def example"
        )
        + "\n@gdla.hookimpl\ndef register_problems(register):\n    register(Problem)\n",
        ["Problem.example must be a classmethod"],
    ),
    "step-with-argument": (
        GOOD_CLASSES.format(problem="p", optimizer="o").replace(
            "        return torch.optim.SGD(tensors, lr=lr)\n",
            "        return torch.optim.SGD(tensors, lr=lr)\n\n"
            "    def step(self, closure):\n        return super().step()\n",
        )
        + "\n@gdla.hookimpl\ndef register_optimizers(register):\n    register(Optimizer)\n",
        ["Optimizer.step(self, closure)", "step(self) takes no argument"],
    ),
    "import-error": ("import no_such_module_for_gdla_tests\n", ["import failed", "no_such_module_for_gdla_tests"]),
    "hook-raises": (
        "import gdla\n\n@gdla.hookimpl\ndef register_problems(register):\n    raise RuntimeError('boom in hook')\n",
        ["RuntimeError", "boom in hook"],
    ),
    "not-a-problem": (
        "import gdla\n\n@gdla.hookimpl\ndef register_problems(register):\n    register(dict)\n",
        ["expected a subclass of gdla.Problem", "dict"],
    ),
    "bad-name": (
        GOOD_CLASSES.format(problem="Bad Name!", optimizer="x")
        + "\n@gdla.hookimpl\ndef register_problems(register):\n    register(Problem)\n",
        ["Problem.name", "lower-case", "'Bad Name!'"],
    ),
    "abstract": (
        "import gdla\n\nclass Half(gdla.Problem):\n    name = 'half'\n\n"
        "@gdla.hookimpl\ndef register_problems(register):\n    register(Half)\n",
        ["Half does not implement", "init_params", "loss"],
    ),
    "wrong-hook-signature": (
        "import gdla\n\n@gdla.hookimpl\ndef register_problems(register, extra):\n    pass\n",
        ["not a valid plugin", "extra"],
    ),
    "misspelled-hook": (
        "import gdla\n\n@gdla.hookimpl\ndef register_problem(register):\n    pass\n",
        ["not a valid plugin", "register_problem"],
    ),
    "optimizer-as-problem": (
        GOOD_CLASSES.format(problem="p", optimizer="o")
        + "\n@gdla.hookimpl\ndef register_problems(register):\n    register(Optimizer)\n",
        ["expected a subclass of gdla.Problem"],
    ),
}


class Distributions:
    """Writes installed-looking distributions into a folder on ``sys.path``."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.modules: list[str] = []
        self.loads: list[str] = []
        monkeypatch.syspath_prepend(str(root))
        # Each test gets its own module names, so a module imported by one test is never reused.
        self.prefix = f"gdla_test_plugin_{abs(hash(root)) % 10**8}"

    def add(self, dist: str, version: str, plugins: dict[str, str]) -> None:
        """One distribution named ``dist`` with one entry point (and module) per ``plugins`` item."""
        lines = ["[gdla]"]
        for ep_name, source in plugins.items():
            module = f"{self.prefix}_{dist}_{ep_name}".replace("-", "_")
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)
            lines.append(f"{ep_name} = {module}")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")

    def entry_points(self) -> list[metadata.EntryPoint]:
        self.loads.append("called")
        found = [
            ep
            for dist in metadata.distributions(path=[str(self.root)])
            for ep in dist.entry_points
            if ep.group == "gdla"
        ]
        return sorted(found, key=lambda ep: (ep.dist.name, ep.name))

    def registry(self) -> registry_module.Registry:
        return registry_module.Registry(entry_points=self.entry_points)


@pytest.fixture
def dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Distributions]:
    monkeypatch.delenv("GDLA_STRICT_PLUGINS", raising=False)
    made = Distributions(tmp_path, monkeypatch)
    yield made
    for module in made.modules:
        sys.modules.pop(module, None)


def test_loading_is_lazy_and_happens_once(dists: Distributions) -> None:
    dists.add("lazy-dist", "1.0", {"lazy": good_plugin(problem="lazy-problem")})
    reg = dists.registry()
    assert dists.loads == [], "building a registry must not read entry points"
    assert not any(m in sys.modules for m in dists.modules), "plugin modules must not import before a lookup"
    assert reg.names("problem") == ["lazy-problem"]
    assert dists.modules[0] in sys.modules
    reg.names("problem")
    reg.entry("problem", "lazy-problem")
    reg.entries()
    assert dists.loads == ["called"], "entry points are read once"


def test_every_entry_knows_its_plugin_and_version(dists: Distributions) -> None:
    dists.add("alpha-dist", "1.2.3", {"a": good_plugin(problem="alpha", optimizer="alpha-gd")})
    dists.add("beta-dist", "0.4", {"b": good_plugin(problem="beta")})
    reg = dists.registry()
    found = {(e.kind, e.name): e for e in reg.entries()}
    assert set(found) == {("problem", "alpha"), ("problem", "beta"), ("optimizer", "alpha-gd")}
    assert found["problem", "alpha"].to_dict() == {
        "name": "alpha",
        "kind": "problem",
        "plugin": "alpha-dist",
        "version": "1.2.3",
    }
    assert found["optimizer", "alpha-gd"].plugin == "alpha-dist"
    assert found["problem", "beta"].version == "0.4"
    assert "beta-dist 0.4" in found["problem", "beta"].source
    assert [e.kind for e in reg.entries()] == ["problem", "problem", "optimizer"]
    assert [e.name for e in reg.entries("optimizer")] == ["alpha-gd"]
    assert issubclass(reg.entry("problem", "alpha").obj, gdla.Problem)


@pytest.mark.parametrize("broken", sorted(BROKEN_PLUGINS))
def test_broken_plugin_warns_and_the_rest_load(dists: Distributions, broken: str) -> None:
    source, words = BROKEN_PLUGINS[broken]
    dists.add("good-dist", "1.0", {"good": good_plugin(problem="good-problem", optimizer="good-gd")})
    dists.add("broken-dist", "2.0", {broken: source})
    reg = dists.registry()
    with pytest.warns(PluginWarning) as record:
        names = reg.names("problem")
    assert names == ["good-problem"]
    assert reg.names("optimizer") == ["good-gd"]
    assert len(record) == 1
    message = str(record[0].message)
    assert "'broken-dist'" in message and f"entry point {broken!r}" in message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert reg.failures == [message]


@pytest.mark.parametrize("broken", sorted(BROKEN_PLUGINS))
def test_strict_mode_turns_each_failure_into_an_error(
    dists: Distributions, broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, words = BROKEN_PLUGINS[broken]
    dists.add("broken-dist", "2.0", {broken: source})
    monkeypatch.setenv("GDLA_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken-dist") as info:
        dists.registry().names("problem")
    for word in words:
        assert word in str(info.value)


def test_strict_mode_off_for_zero(dists: Distributions, monkeypatch: pytest.MonkeyPatch) -> None:
    dists.add("broken-dist", "2.0", {"x": BROKEN_PLUGINS["import-error"][0]})
    monkeypatch.setenv("GDLA_STRICT_PLUGINS", "0")
    with pytest.warns(PluginWarning, match="import failed"):
        assert dists.registry().names("problem") == []


def test_a_failing_hook_registers_nothing_of_its_plugin(dists: Distributions) -> None:
    # the first register() call succeeds, then the hook raises: the plugin must not half-load
    source = good_plugin() + (
        "\n@gdla.hookimpl\ndef register_problems(register):\n"
        "    register(Problem)\n    raise ValueError('second item broke')\n"
    )
    dists.add("half-dist", "1.0", {"half": source})
    reg = dists.registry()
    with pytest.warns(PluginWarning, match="second item broke"):
        assert reg.names("problem") == []


def test_duplicate_names_name_both_sources(dists: Distributions) -> None:
    dists.add("first-dist", "1.0", {"one": good_plugin(problem="twin")})
    dists.add("second-dist", "3.1", {"two": good_plugin(problem="twin")})
    reg = dists.registry()
    with pytest.warns(PluginWarning, match="registered twice") as record:
        reg.load()
    assert "first-dist 1.0" in str(record[0].message) and "second-dist 3.1" in str(record[0].message)
    with pytest.raises(DuplicateNameError) as info:
        reg.entry("problem", "twin")
    assert "first-dist 1.0" in str(info.value) and "second-dist 3.1" in str(info.value)
    assert "uninstall one" in str(info.value)


def test_duplicate_names_raise_in_strict_mode(dists: Distributions, monkeypatch: pytest.MonkeyPatch) -> None:
    dists.add("first-dist", "1.0", {"one": good_plugin(optimizer="twin-gd")})
    dists.add("second-dist", "1.0", {"two": good_plugin(optimizer="twin-gd")})
    monkeypatch.setenv("GDLA_STRICT_PLUGINS", "1")
    registry = dists.registry()
    with pytest.raises(DuplicateNameError, match="'twin-gd' is registered twice"):
        registry.load()
    # no half-loaded registry is left behind: the next lookup tries again and fails again
    with pytest.raises(DuplicateNameError, match="'twin-gd' is registered twice"):
        registry.names("optimizer")


def test_same_name_for_a_problem_and_an_optimizer_is_no_clash(dists: Distributions) -> None:
    dists.add("dist", "1.0", {"both": good_plugin(problem="same", optimizer="same")})
    reg = dists.registry()
    assert reg.entry("problem", "same").kind == "problem"
    assert reg.entry("optimizer", "same").kind == "optimizer"


def test_unknown_names_list_the_valid_ones(dists: Distributions) -> None:
    dists.add("dist", "1.0", {"p": good_plugin(problem="toeplitz-ish", optimizer="heavy-gd")})
    reg = dists.registry()
    with pytest.raises(UnknownNameError) as info:
        reg.entry("problem", "toeplitz-ihs")
    text = str(info.value)
    assert "unknown name 'toeplitz-ihs'" in text
    assert "did you mean 'toeplitz-ish'?" in text
    assert "valid problems: toeplitz-ish" in text
    with pytest.raises(UnknownNameError, match="valid optimizers: heavy-gd") as info:
        reg.entry("optimizer", "zzz")
    assert "did you mean" not in str(info.value)
    assert isinstance(info.value, LookupError)


def test_unknown_name_with_nothing_registered() -> None:
    reg = registry_module.Registry(entry_points=lambda: [])
    with pytest.raises(UnknownNameError, match="none registered"):
        reg.entry("optimizer", "adam")
    with pytest.raises(UnknownNameError, match="unknown name 3"):
        reg.entry("problem", 3)  # type: ignore[arg-type]


def test_entry_point_without_distribution_is_described() -> None:
    ep = metadata.EntryPoint(name="orphan", value="no_such_module_for_gdla_tests_2", group="gdla")
    reg = registry_module.Registry(entry_points=lambda: [ep])
    with pytest.warns(PluginWarning, match="unknown distribution.*'orphan'"):
        reg.load()


def _plugin_object(problem_name: str) -> object:
    namespace: dict[str, object] = {}
    exec(good_plugin(problem=problem_name), namespace)  # a module-like plugin without a file
    return type("Plugin", (), {"register_problems": staticmethod(namespace["register_problems"])})


def test_register_plugin_and_unregister(monkeypatch: pytest.MonkeyPatch, register_plugin: Callable[..., str]) -> None:
    # the conftest fixture registers through `gdla.registry`; point it at an empty registry so
    # the test does not depend on the built-in plugins
    fresh = registry_module.Registry(entry_points=lambda: [])
    monkeypatch.setattr(registry_module, "registry", fresh)
    plugin = _plugin_object("direct-problem")
    name = register_plugin(plugin, name="direct-plugin", dist="direct-dist", version="9.9")
    assert name == "direct-plugin"
    entry = gdla.registry.entry("problem", "direct-problem")
    assert (entry.plugin, entry.version) == ("direct-dist", "9.9")
    problem = gdla.get_problem("direct-problem").example()
    assert torch.equal(problem.reference(), torch.ones(2, 2, dtype=torch.float64))
    gdla.registry.unregister_plugin("direct-plugin")
    assert "direct-problem" not in gdla.problems()
    register_plugin(plugin, name="direct-plugin")  # registering again after removal works


def test_register_plugin_raises_on_invalid_items() -> None:
    reg = registry_module.Registry(entry_points=lambda: [])
    bad = type("Bad", (), {"register_problems": staticmethod(gdla.hookimpl(lambda register: register(int)))})
    with pytest.raises(PluginError, match="expected a subclass of gdla.Problem, received <class 'int'>"):
        reg.register_plugin(bad, name="bad")
    assert reg.names("problem") == []
    reg.register_plugin(_plugin_object("fine"), name="bad")  # the failed name was released
    assert reg.names("problem") == ["fine"]


def test_register_plugin_duplicate_raises() -> None:
    reg = registry_module.Registry(entry_points=lambda: [])
    reg.register_plugin(_plugin_object("dup"), name="one", dist="a")
    with pytest.raises(DuplicateNameError, match="'dup' is registered twice"):
        reg.register_plugin(_plugin_object("dup"), name="two", dist="b")
    assert len(reg.entries("problem")) == 1


# -- threads ------------------------------------------------------------------------------------
def _in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """``work(index)`` in ``count`` threads released together; what each returned or raised (joined with a timeout)."""
    barrier = threading.Barrier(count)
    outcomes: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - the test compares what each thread saw
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck: the registry deadlocked"
    return outcomes


SLOW_IMPORT = "import time\ntime.sleep(0.3)  # a slow plugin import: the other threads arrive meanwhile\n"


def test_threads_wait_for_the_first_load(dists: Distributions) -> None:
    dists.add("slow-dist", "1.0", {"slow-problem": SLOW_IMPORT + good_plugin(problem="slow-problem")})
    dists.add("gd-dist", "1.0", {"slow-gd": SLOW_IMPORT + good_plugin(optimizer="slow-gd")})
    reg = dists.registry()
    work = [
        lambda: reg.entry("problem", "slow-problem").name,
        lambda: reg.names("optimizer"),
        lambda: [e.name for e in reg.entries("problem")],
        lambda: reg.entry("optimizer", "slow-gd").name,
    ]
    outcomes = _in_threads(8, lambda index: work[index % 4]())
    expected = ["slow-problem", ["slow-gd"], ["slow-problem"], "slow-gd"]
    assert outcomes == expected * 2
    assert dists.loads == ["called"], "entry points are read once, by one thread"


def test_a_failed_load_stays_retryable_from_threads(dists: Distributions, monkeypatch: pytest.MonkeyPatch) -> None:
    dists.add("broken-dist", "2.0", {"x": SLOW_IMPORT + BROKEN_PLUGINS["import-error"][0]})
    monkeypatch.setenv("GDLA_STRICT_PLUGINS", "1")
    reg = dists.registry()
    outcomes = _in_threads(4, lambda index: reg.names("problem"))
    assert all(isinstance(outcome, PluginError) and "broken-dist" in str(outcome) for outcome in outcomes), outcomes
    monkeypatch.delenv("GDLA_STRICT_PLUGINS")
    with pytest.warns(PluginWarning, match="import failed"):
        assert reg.names("problem") == []  # nothing half-loaded was kept: this load starts over and succeeds
    assert reg.failures and not reg.names("optimizer")


def test_a_plugin_import_that_looks_a_name_up_does_not_deadlock(
    dists: Distributions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the importing plugin asks the process-wide registry (here: this one) for another plugin's problem
    looks_up = "import gdla\nOTHER = gdla.get_problem('base-problem')\n" + good_plugin(problem="derived-problem")
    dists.add("a-dist", "1.0", {"derived-problem": looks_up})
    dists.add("b-dist", "1.0", {"base-problem": good_plugin(problem="base-problem")})
    reg = dists.registry()
    monkeypatch.setattr(registry_module, "registry", reg)
    outcomes = _in_threads(2, lambda index: gdla.get_problem(("derived-problem", "base-problem")[index]).name)
    assert outcomes == ["derived-problem", "base-problem"]
    assert sys.modules[dists.modules[0]].OTHER is reg.entry("problem", "base-problem").obj
