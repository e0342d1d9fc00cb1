"""The plugin registry: one pluggy ``PluginManager`` fed by entry points of group ``gdla``.

Entry points are loaded lazily, once, and each on its own; a lookup by name imports gdla's own
entry points carrying that name (gdla names each after what its module registers) and every
third party's entry point, and a listing imports all of them: one that fails to import, raises in
its hook or registers something invalid is skipped with a :class:`~gdla.errors.PluginWarning`
naming its distribution, entry point and the reason, and the rest still load.
``GDLA_STRICT_PLUGINS=1`` turns that warning into a :class:`~gdla.errors.PluginError`. Each
plugin loads under its own ``warnings.catch_warnings()``: a filter it sets at import (say
``warnings.simplefilter("error")``) does not reach the plugins loaded after it.

One rule for a name registered twice (by gdla and a third party, or by two third parties): it
cannot be used by its bare name, on any path (a lookup before or after a listing, every command):
a :class:`~gdla.errors.DuplicateNameError` names both distributions and entry points and how to
choose one, ``DIST:NAME`` (``gdla solve gdla:inverse``, ``gdla.get_problem("my-dist:inverse")``)
or uninstalling one. Because a lookup by name loads every third party, the verdict does not depend
on what was loaded before. :meth:`Registry.register_plugin` refuses a clashing name at once.

Loading is thread-safe: one re-entrant lock guards every load and every change, and the registry
counts as loaded only once a load has finished, so a lookup from another thread waits for it
instead of seeing a half-filled registry; a plugin whose import itself looks a name up (in the
loading thread) does not deadlock.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

import pluggy

from gdla import hookspecs
from gdla.errors import DuplicateNameError, PluginError, PluginWarning, UnknownNameError
from gdla.optimizer import Optimizer
from gdla.problem import Problem

__all__ = [
    "Entry",
    "Registry",
    "entries",
    "entry",
    "get_optimizer",
    "get_problem",
    "optimizers",
    "problems",
    "register_plugin",
    "registry",
    "unregister_plugin",
]

Kind = Literal["problem", "optimizer"]
KINDS: dict[str, tuple[str, type]] = {
    "problem": ("register_problems", Problem),
    "optimizer": ("register_optimizers", Optimizer),
}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*$")
#: Methods a plugin class must be able to call as gdla calls them: name -> (arguments after self, the rule).
CALLED_AS: dict[str, dict[str, tuple[int, str]]] = {
    "problem": {
        "init_params": (1, "init_params(self, generator) takes the CPU torch.Generator"),
        "loss": (1, "loss(self, params) takes the parameter dict"),
        "solution": (1, "solution(self, params) takes the parameter dict"),
        "residual": (1, "residual(self, params) takes the parameter dict"),
        "error": (1, "error(self, params) takes the parameter dict"),
        "reference": (0, "reference(self) takes no argument"),
    },
    "optimizer": {"step": (0, "step(self) takes no argument and returns the loss it evaluated")},
}
#: Methods that must be classmethods (gdla calls them on the class).
CLASSMETHODS = {"problem": ("example", "from_matrix", "estimated_bytes", "demo"), "optimizer": ("unsupported_reason",)}
GROUP = "gdla"
#: The distribution of gdla's own plugins: the only one a lookup by name trusts to name each entry point after
#: what its module registers (a test checks it), so that lookup need not import its other modules.
BUILTIN_DISTRIBUTION = "gdla"


@dataclass(frozen=True)
class Entry:
    """One registered problem or optimizer and where it came from."""

    name: str
    kind: Kind
    obj: type
    plugin: str
    version: str
    source: str
    #: ``(name, value)`` of the entry point that registered it; ``None`` for :meth:`Registry.register_plugin`.
    entry_point: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "plugin": self.plugin, "version": self.version}


class Registry:
    """Problems and optimizers registered by plugins, looked up by name."""

    def __init__(self, entry_points: Callable[[], Iterable[metadata.EntryPoint]] | None = None) -> None:
        self._entry_points = entry_points or (lambda: metadata.entry_points(group=GROUP))
        self._lock = threading.RLock()  # kept by _reset: a thread waiting on it must find the registry it guards
        self._reset()

    def _reset(self) -> None:
        """Forget everything loaded or registered (a failed load's partial state), so the next lookup starts over."""
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._loaded = False  # True only after a complete load
        self._read: list[metadata.EntryPoint] | None = None  # the entry points, read once
        self._imported: set[tuple[str, str]] = set()  # (distribution, module) already loaded
        self._visited: set[int] = set()  # indexes into _read already handled
        self._dists: dict[int, tuple[str, str]] = {}  # id(ep.dist) -> (name, version): metadata parsed once
        self._items: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        self._plugin_items: dict[str, list[Entry]] = {}
        self.failures: list[str] = []

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load every entry point of group ``gdla`` (only the first complete call does anything).

        Another thread calling meanwhile waits for this load to finish.
        """
        if self._loaded:  # set last, after a complete load: safe to read without the lock
            return
        with self._lock:
            if self._loaded:
                return
            self._load_guarded(None)
            self._loaded = True

    def _load_named(self, name: str) -> None:
        """Load only the entry points named ``name`` (the convention: an entry point per registered name)."""
        with self._lock:
            if not self._loaded:
                self._load_guarded(name)

    def _load_guarded(self, only: str | None) -> None:
        """:meth:`_load_entry_points`, under the lock; a load stopped half way is forgotten."""
        try:
            self._load_entry_points(only=only)
        except BaseException:
            # strict mode (or warnings turned into errors) stopped the load half way: forget it
            # all, so the next lookup tries again instead of seeing a partial registry
            self._reset()
            raise

    def _load_entry_points(self, only: str | None = None) -> None:
        if self._read is None:
            self._read = list(self._entry_points())
        for index, ep in enumerate(self._read):
            if index in self._visited:
                continue
            dist, version = self._distribution(ep)
            if only is not None and ep.name != only and dist == BUILTIN_DISTRIBUTION:
                continue  # a third party loads on every lookup: one of its names may clash with this one
            self._visited.add(index)
            if (dist, ep.value) in self._imported:  # several entry points may name one module
                continue
            self._imported.add((dist, ep.value))
            where = f"distribution {dist!r}, entry point {ep.name!r} ({ep.value})"
            try:
                with warnings.catch_warnings():  # a filter the plugin sets at import stays with it
                    plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # any import-time failure of foreign code, sys.exit() included
                code = f" with code {exc.code!r}" if isinstance(exc, SystemExit) else ""
                self._fail(where, f"import failed: {type(exc).__name__}{code}: {exc}")
                continue
            self._add(
                plugin,
                plugin_name=f"{dist}:{ep.name}",
                dist=dist,
                version=version,
                where=where,
                strict=False,
                entry_point=(ep.name, ep.value),
            )

    def _distribution(self, ep: metadata.EntryPoint) -> tuple[str, str]:
        """``(name, version)`` of the distribution declaring ``ep`` (its metadata parsed once per distribution)."""
        if ep.dist is None:
            return "unknown distribution", "unknown"
        key = id(ep.dist)  # ep.dist lives as long as self._read, which holds ep
        if key not in self._dists:
            self._dists[key] = (ep.dist.name, ep.dist.version)
        return self._dists[key]

    def register_plugin(self, plugin: Any, *, name: str | None = None, dist: str = "local", version: str = "0") -> str:
        """Register a plugin object directly (no entry point); errors raise. Returns its name."""
        with self._lock:
            self.load()
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            where = f"plugin {plugin_name!r}"
            self._add(plugin, plugin_name=plugin_name, dist=dist, version=version, where=where, strict=True)
        return plugin_name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        with self._lock:
            self._pm.unregister(name=name)
            for entry in self._plugin_items.pop(name, []):
                bucket = self._items[entry.kind]
                bucket[entry.name] = [e for e in bucket.get(entry.name, []) if e is not entry]
                if not bucket[entry.name]:
                    del bucket[entry.name]

    def _add(
        self,
        plugin: Any,
        *,
        plugin_name: str,
        dist: str,
        version: str,
        where: str,
        strict: bool,
        entry_point: tuple[str, str] | None = None,
    ) -> None:
        strict = strict or os.environ.get("GDLA_STRICT_PLUGINS", "") not in ("", "0")
        try:
            self._pm.register(plugin, name=plugin_name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._fail(where, f"not a valid plugin: {exc}", strict)
            return
        try:  # a function named like a hook but not one (register_problem) is a mistake
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(name=plugin_name)
            self._fail(where, f"not a valid plugin: {exc}", strict)
            return
        if not self._pm.get_hookcallers(plugin):
            self._pm.unregister(name=plugin_name)
            self._fail(where, "no @gdla.hookimpl function register_problems or register_optimizers found", strict)
            return
        staged: list[Entry] = []
        try:
            for kind, (hook_name, _base) in KINDS.items():
                for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name != plugin_name:
                        continue

                    def register(obj: Any, _kind: str = kind) -> None:
                        staged.append(self._validate(obj, _kind, dist=dist, version=version, entry_point=entry_point))

                    with warnings.catch_warnings():  # a filter the hook sets stays with it
                        impl.function(register)
        except Exception as exc:
            self._pm.unregister(name=plugin_name)
            self._fail(where, f"{type(exc).__name__}: {exc}", strict)
            return
        for entry in staged:
            clash = self._items[entry.kind].get(entry.name)
            if clash:
                direct = entry.entry_point is None  # register_plugin: the caller can act at once
                message = clash_message([*clash, entry], direct=direct)
                if strict:
                    self._pm.unregister(name=plugin_name)
                    raise DuplicateNameError(message)
                warnings.warn(message, PluginWarning, stacklevel=3)
            self._items[entry.kind].setdefault(entry.name, []).append(entry)
        self._plugin_items[plugin_name] = staged

    def _validate(self, obj: Any, kind: str, *, dist: str, version: str, entry_point: tuple[str, str] | None) -> Entry:
        base = KINDS[kind][1]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"register() expected a subclass of gdla.{base.__name__}, received {obj!r}")
        name = getattr(obj, "name", "")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(
                f"{obj.__name__}.name: expected a lower-case name such as 'my-problem', received {name!r}"
            )
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(obj.__abstractmethods__))
            raise PluginError(f"{obj.__name__} does not implement {missing}")
        _check_signatures(obj, kind)
        via = f", entry point {entry_point[0]!r}" if entry_point else ""
        source = f"{dist} {version}{via} ({obj.__module__}.{obj.__qualname__})"
        return Entry(
            name=name,
            kind=kind,
            obj=obj,
            plugin=dist,
            version=version,
            source=source,  # type: ignore[arg-type]
            entry_point=entry_point,
        )

    def _fail(self, where: str, reason: str, strict: bool | None = None) -> None:
        if strict is None:
            strict = os.environ.get("GDLA_STRICT_PLUGINS", "") not in ("", "0")
        message = f"gdla plugin skipped: {where}: {reason}"
        if strict:
            raise PluginError(message)
        self.failures.append(message)
        warnings.warn(message, PluginWarning, stacklevel=4)

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, kind: Kind, name: str) -> Entry:
        """The registry entry for ``name`` (or ``DIST:NAME``, the one distribution ``DIST`` registered).

        Raises for an unknown name and for a name registered twice (the rule in the module docstring). gdla's own
        entry points named ``name`` and every third party's are imported first; every other one only if that
        does not find it.
        """
        dist, bare = _qualified(name)
        found = None
        if isinstance(bare, str) and not self._loaded:
            with self._lock:  # the named load and its lookup as one step: no other thread's reset in between
                self._load_named(bare)
                found = self._items[kind].get(bare)
        if not found:
            self.load()
            found = self._items[kind].get(bare) if isinstance(bare, str) else None
        if found and dist is not None:
            chosen = [e for e in found if e.plugin == dist]
            if not chosen:
                raise UnknownNameError(
                    f"{kind}: {name!r}: distribution {dist!r} registers no {kind} {bare!r}; "
                    f"registered by: {', '.join(f'{e.plugin}:{bare}' for e in found)}"
                )
            found = chosen
        if not found:
            valid = sorted(self._items[kind])
            hint = difflib.get_close_matches(str(name), valid, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UnknownNameError(
                f"{kind}: unknown name {name!r}{suggestion}; valid {kind}s: {', '.join(valid) or 'none registered'}"
            )
        if len(found) > 1:
            raise DuplicateNameError(clash_message(found))
        return found[0]

    def clashes(self) -> list[str]:
        """One sentence (as :class:`~gdla.errors.DuplicateNameError` says it) for each name registered twice."""
        self.load()
        return [clash_message(found) for kind in KINDS for found in self._items[kind].values() if len(found) > 1]

    def entries(self, kind: Kind | None = None) -> list[Entry]:
        """All registered entries (of one kind, if given), sorted by kind then name."""
        self.load()
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for n in sorted(self._items[k]) for e in self._items[k][n]]

    def names(self, kind: Kind) -> list[str]:
        self.load()
        return sorted(self._items[kind])

    def named(self, kind: Kind) -> list[tuple[str, list[Entry]]]:
        """Every name of ``kind`` with its entries (more than one: a clash, see :meth:`entry`), in name order."""
        self.load()
        return [(name, list(self._items[kind][name])) for name in sorted(self._items[kind])]


def _qualified(name: Any) -> tuple[str | None, Any]:
    """``(DIST, NAME)`` of ``"DIST:NAME"``; ``(None, name)`` of a bare name (a registered name holds no colon)."""
    if isinstance(name, str) and ":" in name:
        dist, _, bare = name.rpartition(":")
        return dist, bare
    return None, name


def clash_message(found: list[Entry], *, direct: bool = False) -> str:
    """What a name registered more than once is: who registered it, and how to choose one (or, for ``direct``,
    a :meth:`Registry.register_plugin` call, how to avoid the clash)."""
    first = found[0]
    sources = " and by ".join(e.source for e in found)
    text = f"{first.kind} name {first.name!r} is registered twice: by {sources}; "
    if direct:
        return text + "give the new class another name, or unregister_plugin() the other plugin first"
    choices = " or ".join(repr(f"{e.plugin}:{first.name}") for e in found)
    return text + f"choose one by its distribution, {choices} (DIST:NAME wherever a name is taken), or uninstall one"


def _check_signatures(cls: type, kind: str) -> None:
    """Refuse methods gdla cannot call as it does (a wrong argument count, a missing classmethod)."""
    for method in CLASSMETHODS[kind]:
        if not isinstance(inspect.getattr_static(cls, method), classmethod):
            raise PluginError(f"{cls.__qualname__}.{method} must be a classmethod (gdla calls it on the class)")
    for method, (count, rule) in CALLED_AS[kind].items():
        function = inspect.getattr_static(cls, method)
        if isinstance(function, (staticmethod, classmethod)) or not callable(function):
            raise PluginError(f"{cls.__qualname__}.{method} must be a plain method: {rule}")
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # a builtin or C function: nothing to check
            continue
        try:
            signature.bind(None, *range(count))
        except TypeError:
            raise PluginError(
                f"{cls.__qualname__}.{method}{signature} cannot be called as gdla calls it: {rule}"
            ) from None


#: The process-wide registry used by :func:`gdla.solve` and the command line.
registry = Registry()


# The functions below look ``registry`` up at call time, so a test may swap in a fresh one.
def entry(kind: Kind, name: str) -> Entry:
    """The registry entry (object, plugin, version, source) for ``name`` of ``kind``."""
    return registry.entry(kind, name)


def entries(kind: Kind | None = None) -> list[Entry]:
    """Every registered entry, of one kind if given."""
    return registry.entries(kind)


def register_plugin(plugin: Any, *, name: str | None = None, dist: str = "local", version: str = "0") -> str:
    """Register a plugin object directly, without an entry point; errors raise. Returns its name."""
    return registry.register_plugin(plugin, name=name, dist=dist, version=version)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under ``name`` and everything it registered."""
    registry.unregister_plugin(name)


def get_problem(name: str) -> type[Problem]:
    """The problem class registered as ``name``."""
    return registry.entry("problem", name).obj


def get_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class registered as ``name``."""
    return registry.entry("optimizer", name).obj


def problems() -> list[str]:
    """Names of the registered problems."""
    return registry.names("problem")


def optimizers() -> list[str]:
    """Names of the registered optimizers."""
    return registry.names("optimizer")


def named_optimizers() -> list[tuple[str, list[Entry]]]:
    """Each registered optimizer name with its entries, in name order (one lookup for a ranking of them all)."""
    return registry.named("optimizer")
