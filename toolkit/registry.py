"""Plugin discovery through Python entry points.

Three entry-point groups make up the public plugin API:

* ``toolkit.agents`` names an :class:`AgentSpec`;
* ``toolkit.envs`` names a callable that registers Gymnasium environments;
* ``toolkit.models`` names a :class:`ModelSpec`.

Discovery reads only the installed distributions' metadata. A spec is imported when it is
first asked for, and a spec module is expected to be light (no torch at import time): the
algorithm itself is named by a ``"module:attribute"`` string and imported only to train.
A plugin that fails to import is reported as broken with its reason and never breaks the
others; two distributions that claim one name are a conflict that names both.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from toolkit import PLUGIN_API_VERSION
from toolkit.errors import ToolkitError, did_you_mean

AGENTS = "toolkit.agents"
ENVS = "toolkit.envs"
MODELS = "toolkit.models"
#: Priors over VAE latents (``--set prior=NAME:ARGS``): each names a
#: :class:`toolkit.nn.priors.Prior` subclass. Not in GROUPS: loading one imports torch.
PRIORS = "toolkit.priors"
GROUPS = (AGENTS, ENVS, MODELS)

#: ``external``: an agent whose algorithm lives in another library (:mod:`toolkit.external`).
AgentKind = Literal["off-policy", "on-policy", "offline", "external"]
ModelKind = Literal["autoencoder", "generative", "classifier", "world-model"]
SpaceKind = Literal["box", "discrete", "multi-discrete", "multi-binary", "image"]


def load_object(reference: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module_name, _, attr = reference.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _describe_value(value: Any) -> str:
    """``the string '1'``, ``the float 1.0``: a value and its type, for messages."""
    noun = {str: "string", float: "float", bool: "boolean"}.get(type(value))
    return f"the {noun} {value!r}" if noun else f"{value!r} of type {type(value).__name__}"


def _import_factory(reference: str) -> Any:
    """Import a spec's ``"module:function"`` factory reference."""
    if ":" not in reference:
        raise ImportError(f"'{reference}' is not of the form 'module:function'")
    return load_object(reference)


def factory_problem(spec: AgentSpec | ModelSpec) -> str | None:
    """Import ``spec``'s factory: ``None`` if it imports and is callable, else why not, in one line."""
    factory = spec.factory
    if isinstance(factory, str):
        try:
            factory = _import_factory(factory)
        except (Exception, SystemExit) as exc:  # whatever the plugin's module raises
            return f"its factory {spec.factory} does not import: {type(exc).__name__}: {exc}"
    if not callable(factory):
        return f"its factory {spec.factory!r} is not callable"
    return None


def _missing_factory_module(reference: str) -> str | None:
    """Why ``reference``'s module cannot exist, found without importing anything new: a cheap
    check for `toolkit list` (the module's parent package must already be imported, as it is
    when the factory sits next to the spec). ``None`` when nothing is known to be wrong."""
    import importlib.util
    import sys

    if ":" not in reference:
        return f"its factory '{reference}' is not of the form 'module:function'"
    module = reference.partition(":")[0]
    parent = module.rpartition(".")[0]
    if module in sys.modules or (parent and parent not in sys.modules):
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    return None if found is not None else f"its factory {reference} does not import: no module named '{module}'"


class FactoryImportError(ToolkitError):
    """A spec's factory could not be imported (the plugin is broken)."""


def _build(spec: AgentSpec | ModelSpec, noun: str, args: Any, kwargs: Any) -> Any:
    factory = spec.factory
    if isinstance(factory, str):
        try:
            factory = _import_factory(factory)
        except (Exception, SystemExit) as exc:
            raise FactoryImportError(
                f"The {noun} '{spec.name}' is broken: its factory {spec.factory} does not import "
                f"({type(exc).__name__}: {exc}); run `toolkit list --check` to check every plugin."
            ) from None
    return factory(*args, **kwargs)


@dataclass(frozen=True)
class AgentSpec:
    """What a ``toolkit.agents`` entry point names: everything the framework needs to train
    an agent without importing its code until it is used.

    ``factory`` is called as ``factory(config, observation_space, action_space, device)`` and
    returns an :class:`toolkit.agent.Agent`. Give it as ``"module:function"`` so that listing
    plugins stays cheap; a callable also works.
    """

    name: str
    config: type
    factory: str | Callable[..., Any]
    kind: AgentKind
    action_spaces: tuple[str, ...]
    observation_spaces: tuple[str, ...] = ("box",)
    description: str = ""
    #: Training budget used when ``--steps`` is not given.
    default_steps: int = 1_000_000
    #: The plugin API version the plugin was written for; every plugin must declare it.
    api_version: int | None = None
    #: Tuned settings per env id, applied by ``toolkit train --preset`` (like rl-zoo's
    #: hyperparameter files): env id -> ``{"settings": {key: value}, "return": the mean
    #: evaluation return they reached, "command": the command that measured it}``.
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    #: Distributions the agent's factory needs beyond the toolkit's own dependencies (a
    #: bridge's library). When one is missing the agent is listed as ``unavailable`` with the
    #: pip command that installs it, and using it is one sentence saying so.
    requires: tuple[str, ...] = ()
    #: The extra of the plugin's distribution that installs :attr:`requires` (``pip install
    #: 'DIST[EXTRA]'``); None when there is none.
    extra: str | None = None

    def preset(self, env: str) -> Mapping[str, Any]:
        """The preset for ``env``; none is a :class:`ToolkitError` sentence naming the envs that have one."""
        if env not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ToolkitError(f"Agent '{self.name}' has no preset for {env}; envs with a preset: {known}.")
        return self.presets[env]

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Import the factory and build the agent; a factory that fails to import is one
        :class:`ToolkitError` sentence, never a traceback."""
        return _build(self, "agent", args, kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """What a ``toolkit.models`` entry point names: a vision or generative model.

    ``factory`` is called as ``factory(config, data_spec, device)`` with a
    :class:`toolkit.model.DataSpec` and returns a :class:`toolkit.model.Model`. Give it as
    ``"module:function"`` so that listing plugins stays cheap. ``config`` must have a
    ``batch_size`` field: the model loop samples minibatches of that size.
    """

    name: str
    config: type
    factory: str | Callable[..., Any]
    kind: ModelKind = "autoencoder"
    description: str = ""
    #: Gradient steps used when ``--steps`` is not given.
    default_steps: int = 5_000
    #: The plugin API version the plugin was written for; every plugin must declare it.
    api_version: int | None = None

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Import the factory and build the model; a factory that fails to import is one
        :class:`ToolkitError` sentence, never a traceback."""
        return _build(self, "model", args, kwargs)


Status = Literal["ok", "broken", "incompatible", "conflict", "unavailable"]


def library_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def missing_requirement(spec: AgentSpec, distribution: str) -> str | None:
    """Why ``spec`` cannot be used here when a distribution it requires is not installed (with
    the command that installs it), else None."""
    missing = [name for name in spec.requires if library_version(name) is None]
    if not missing:
        return None
    command = f"pip install '{distribution}[{spec.extra}]'" if spec.extra else "pip install " + " ".join(missing)
    return f"needs {' and '.join(missing)}, which is not installed; {command}"


@dataclass
class PluginEntry:
    """One entry point found in the installed metadata, and what became of loading it."""

    name: str
    group: str
    value: str
    distribution: str
    version: str
    status: Status = "ok"
    reason: str = ""
    obj: Any = field(default=None, repr=False)
    loaded: bool = False

    @property
    def kind(self) -> str:
        """The agent kind for agents, the group's noun otherwise."""
        if isinstance(self.obj, (AgentSpec, ModelSpec)):
            return self.obj.kind
        return {AGENTS: "agent", ENVS: "env", MODELS: "model", PRIORS: "prior"}[self.group]

    def load(self) -> Any:
        """Import the entry point once; record why it failed instead of raising."""
        if self.loaded or self.status == "conflict":
            return self.obj
        self.loaded = True
        try:
            self.obj = load_object(self.value)
        except (Exception, SystemExit) as exc:  # a broken plugin must never break the others
            self.status, self.reason = "broken", f"{type(exc).__name__}: {exc}"
            return None
        version = getattr(self.obj, "api_version", None)
        if self.group == AGENTS and not isinstance(self.obj, AgentSpec):
            self.status, self.reason = "broken", f"{self.value} is not an AgentSpec"
        elif self.group == MODELS and not isinstance(self.obj, ModelSpec):
            self.status, self.reason = "broken", f"{self.value} is not a ModelSpec"
        elif self.group != ENVS and version is None:
            self.status = "incompatible"
            self.reason = f"{self.value} declares no api_version; set api_version={PLUGIN_API_VERSION} in its spec"
        elif self.group != ENVS and (isinstance(version, bool) or not isinstance(version, int)):
            self.status = "incompatible"
            self.reason = (
                f"api_version must be the integer {PLUGIN_API_VERSION}, got {_describe_value(version)}; "
                f"set api_version={PLUGIN_API_VERSION} in the spec ({self.value})"
            )
        elif self.group != ENVS and version != PLUGIN_API_VERSION:
            self.status = "incompatible"
            self.reason = (
                f"built for plugin API {version}, this toolkit speaks version {PLUGIN_API_VERSION}; "
                f"install a release of {self.distribution} made for it"
            )
        elif self.group in (AGENTS, MODELS) and self.obj.name != self.name:
            self.status = "broken"
            self.reason = (
                f"the entry point is called '{self.name}' but its spec ({self.value}) is named '{self.obj.name}'; "
                "give the entry point and the spec the same name"
            )
        elif self.group == AGENTS and (unmet := missing_requirement(self.obj, self.distribution)):
            self.status, self.reason = "unavailable", unmet
        elif self.group in (AGENTS, MODELS) and isinstance(self.obj.factory, str):
            missing = _missing_factory_module(self.obj.factory)
            if missing:
                self.status, self.reason = "broken", missing
        return self.obj

    def check(self) -> str | None:
        """Load the entry point and also import its spec's factory (which may import torch):
        ``None`` when the plugin is usable, else its one-line problem, also recorded as its
        status. What `toolkit list --check` and the contract tests run."""
        self.load()
        if self.status == "ok" and self.group in (AGENTS, MODELS):
            problem = factory_problem(self.obj)
            if problem:
                self.status, self.reason = "broken", problem
        return None if self.status == "ok" else self.reason


def _distribution_entry_points(group: str) -> list[PluginEntry]:
    entries: dict[tuple[str, str], PluginEntry] = {}
    for ep in md.entry_points(group=group):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "unknown"
        dist_version = dist.version if dist is not None else "?"
        # The same distribution can be visible twice (e.g. an editable install on sys.path).
        entries.setdefault(
            (ep.name, dist_name),
            PluginEntry(ep.name, group, ep.value, dist_name, dist_version),
        )
    return list(entries.values())


class Registry:
    """Entry points of one process, discovered once and loaded on demand."""

    def __init__(self) -> None:
        self._entries: dict[str, list[PluginEntry]] | None = None

    def refresh(self) -> None:
        """Forget what was discovered (after installing a plugin at run time)."""
        self._entries = None

    def entries(self, group: str) -> list[PluginEntry]:
        """Every entry point in ``group``, conflicts marked, nothing imported."""
        if self._entries is None:
            self._entries = {}
        if group not in self._entries:
            found = sorted(_distribution_entry_points(group), key=lambda e: (e.name, e.distribution))
            by_name: dict[str, list[PluginEntry]] = {}
            for entry in found:
                by_name.setdefault(entry.name, []).append(entry)
            for name, same in by_name.items():
                if len(same) > 1:
                    owners = " and ".join(f"{e.distribution} {e.version}" for e in same)
                    for entry in same:
                        entry.status = "conflict"
                        entry.reason = f"'{name}' is claimed by both {owners}; uninstall one"
            self._entries[group] = found
        return self._entries[group]

    def all_entries(self) -> list[PluginEntry]:
        """Every plugin of every group, each loaded so its status is known."""
        out = [e for g in GROUPS for e in self.entries(g)]
        for entry in out:
            entry.load()
        return out

    def check_all(self) -> list[PluginEntry]:
        """Every plugin of every group, each loaded and its factory imported
        (:meth:`PluginEntry.check`): what `toolkit list --check` reports."""
        out = [e for g in GROUPS for e in self.entries(g)]
        for entry in out:
            entry.check()
        return out

    def names(self, group: str) -> list[str]:
        return sorted({e.name for e in self.entries(group)})

    def get(self, group: str, name: str) -> Any:
        """Load the plugin called ``name``; a clear :class:`ToolkitError` if that fails."""
        noun = {AGENTS: "agent", ENVS: "environment plugin", MODELS: "model", PRIORS: "prior"}[group]
        matches = [e for e in self.entries(group) if e.name == name]
        if not matches:
            raise ToolkitError(
                f"Unknown {noun} '{name}'.{did_you_mean(name, self.names(group))} "
                f"Run `toolkit list` to see every installed plugin."
            )
        entry = matches[0]
        obj = entry.load()
        if entry.status != "ok":
            state = {"conflict": "ambiguous", "broken": "broken", "incompatible": "incompatible",
                     "unavailable": "unavailable"}[entry.status]
            raise ToolkitError(f"The {noun} '{name}' from {entry.distribution} is {state}: {entry.reason}.")
        return obj

    def agent(self, name: str) -> AgentSpec:
        """The spec of agent ``name``."""
        return self.get(AGENTS, name)

    def agents(self) -> list[AgentSpec]:
        """Every agent that loads cleanly."""
        return [e.load() for e in self.entries(AGENTS) if e.load() is not None and e.status == "ok"]

    def model(self, name: str) -> ModelSpec:
        """The spec of model ``name``."""
        return self.get(MODELS, name)

    def models(self) -> list[ModelSpec]:
        """Every model that loads cleanly."""
        return [e.load() for e in self.entries(MODELS) if e.load() is not None and e.status == "ok"]

    def prior(self, name: str) -> Any:
        """The :class:`toolkit.nn.priors.Prior` subclass registered as ``name``."""
        return self.get(PRIORS, name)

    def learner(self, name: str) -> AgentSpec | ModelSpec:
        """The agent or model called ``name`` (names are unique across both groups in practice;
        an agent wins a tie). Unknown names get suggestions from both groups."""
        if any(e.name == name for e in self.entries(AGENTS)):
            return self.agent(name)
        if any(e.name == name for e in self.entries(MODELS)):
            return self.model(name)
        known = self.names(AGENTS) + self.names(MODELS)
        raise ToolkitError(
            f"Unknown agent or model '{name}'.{did_you_mean(name, known)} Run `toolkit list` to see every installed plugin."
        )


#: The process-wide registry used by the CLI.
registry = Registry()
