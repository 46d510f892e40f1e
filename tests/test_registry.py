"""Plugin discovery through entry points, tested with fake distributions.

Each test builds distributions the way pip leaves them on disk (a ``<name>-<version>.dist-info``
folder with ``METADATA`` and ``entry_points.txt``, plus the modules) in a temporary folder put
on ``sys.path``, then asks a fresh :class:`toolkit.registry.Registry`. Module names are unique
per test and forgotten afterwards, so no test sees another's plugins.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import toolkit
import toolkit.registry
from toolkit import PLUGIN_API_VERSION
from toolkit.errors import ToolkitError
from toolkit.registry import AGENTS, ENVS, MODELS, AgentSpec, ModelSpec, Registry

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "toolkit-plugin-template"
TEMPLATE_PACKAGE = "toolkit_plugin_template"


def agent_spec_source(name: str, factory: str = "builtins:dict", api_version: int = PLUGIN_API_VERSION) -> str:
    """A light spec module, as a plugin author would write it."""
    return textwrap.dedent(
        f"""
        from dataclasses import dataclass

        from toolkit.config import option
        from toolkit.registry import AgentSpec


        @dataclass(frozen=True)
        class Config:
            lr: float = option(1e-3, "Learning rate.")


        SPEC = AgentSpec(
            name={name!r},
            config=Config,
            factory={factory!r},
            kind="off-policy",
            action_spaces=("box",),
            description="A fake agent for the registry tests.",
            api_version={api_version!r},
        )
        NOT_A_SPEC = {{"name": {name!r}}}
        """
    )


class Site:
    """A folder on ``sys.path`` that fake distributions are installed into."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def unique(stem: str) -> str:
        """A module name no other test uses."""
        return f"fakeplugin_{stem}_{uuid.uuid4().hex[:10]}"

    def distribution(
        self,
        name: str,
        version: str,
        entry_points: dict[str, dict[str, str]],
        modules: dict[str, str] | None = None,
    ) -> None:
        """Write ``<name>-<version>.dist-info`` and the given ``{module: source}`` files."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines: list[str] = []
        for group, points in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {value}" for ep_name, value in points.items()]
            lines.append("")
        (info / "entry_points.txt").write_text("\n".join(lines))
        for module, source in (modules or {}).items():
            (self.root / f"{module}.py").write_text(source)
        importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield Site(root)
    for name in set(sys.modules) - before:
        if name.startswith("fakeplugin_") or name.split(".")[0] == TEMPLATE_PACKAGE:
            del sys.modules[name]
    importlib.invalidate_caches()


def by_name(entries: list, name: str):
    found = [e for e in entries if e.name == name]
    assert found, f"{name} not discovered; found {[e.name for e in entries]}"
    return found


# --- discovery ---------------------------------------------------------------------------------


def test_plugin_from_another_distribution_is_discovered_and_loaded_on_demand(site: Site) -> None:
    spec_mod, algo_mod = site.unique("spec"), site.unique("algo")
    site.distribution(
        "fake-agents", "1.2.3", {AGENTS: {"fake-agent": f"{spec_mod}:SPEC"}},
        {
            spec_mod: agent_spec_source("fake-agent", factory=f"{algo_mod}:make"),
            algo_mod: "def make(config, observation_space, action_space, device):\n"
                      "    return ('built', config, observation_space, action_space, device)\n",
        },
    )
    registry = Registry()

    [entry] = by_name(registry.entries(AGENTS), "fake-agent")
    assert (entry.distribution, entry.version, entry.status, entry.group) == ("fake-agents", "1.2.3", "ok", AGENTS)
    assert spec_mod not in sys.modules, "discovery must read metadata only"
    assert "fake-agent" in registry.names(AGENTS) and "sac" in registry.names(AGENTS)

    spec = registry.agent("fake-agent")
    assert isinstance(spec, AgentSpec) and spec.name == "fake-agent"
    assert spec_mod in sys.modules and algo_mod not in sys.modules, "the factory is imported only to build"
    assert entry.kind == "off-policy"
    assert spec in registry.agents()

    config = spec.config()
    assert spec.build(config, "obs-space", "act-space", "cpu") == ("built", config, "obs-space", "act-space", "cpu")
    assert algo_mod in sys.modules


def test_env_and_model_plugins_are_discovered_in_their_groups(site: Site) -> None:
    mod = site.unique("things")
    site.distribution(
        "fake-things", "0.3", {
            ENVS: {"fake-envs": f"{mod}:register"},
            MODELS: {"fake-model": f"{mod}:MODEL", "fake-not-model": f"{mod}:register"},
        },
        {mod: textwrap.dedent("""
            from dataclasses import dataclass
            from toolkit.registry import ModelSpec

            def register():
                pass

            @dataclass(frozen=True)
            class Config:
                pass

            MODEL = ModelSpec(name="fake-model", config=Config, factory="builtins:dict", kind="generative", api_version=1)
        """)},
    )
    registry = Registry()
    entries = registry.all_entries()
    [env] = by_name(entries, "fake-envs")
    [model] = by_name(entries, "fake-model")
    [not_model] = by_name(entries, "fake-not-model")
    assert (env.group, env.kind, env.status) == (ENVS, "env", "ok")
    assert (model.group, model.kind, model.status) == (MODELS, "generative", "ok")  # a model's kind, as agents show theirs
    assert isinstance(registry.get(MODELS, "fake-model"), ModelSpec)
    assert callable(registry.get(ENVS, "fake-envs"))
    assert not_model.status == "broken" and "not a ModelSpec" in not_model.reason
    with pytest.raises(ToolkitError, match="Unknown model 'no-such-model'"):
        registry.get(MODELS, "no-such-model")


def test_first_party_agents_come_from_toolkit_rl() -> None:
    registry = Registry()
    for name in ("sac", "sac-icm"):
        [entry] = by_name(registry.entries(AGENTS), name)
        assert (entry.distribution, entry.version) == ("toolkit-rl", toolkit.__version__)
        assert registry.agent(name).name == name
        assert entry.status == "ok"
    [envs] = by_name(registry.entries(ENVS), "toolkit-envs")
    assert envs.distribution == "toolkit-rl"


# --- failures --------------------------------------------------------------------------------


def test_a_broken_plugin_is_reported_and_never_breaks_the_others(site: Site) -> None:
    bad, missing, good = site.unique("bad"), site.unique("missing"), site.unique("good")
    site.distribution(
        "fake-mixed", "0.1", {AGENTS: {
            "fake-broken": f"{bad}:SPEC",
            "fake-missing-dep": f"{missing}:SPEC",
            "fake-no-attr": f"{good}:NO_SUCH_SPEC",
            "fake-not-spec": f"{good}:NOT_A_SPEC",
            "fake-fine": f"{good}:SPEC",
        }},
        {
            bad: "raise RuntimeError('the plugin exploded at import')\n",
            missing: "import fakeplugin_dependency_that_is_not_installed\n",
            good: agent_spec_source("fake-fine"),
        },
    )
    registry = Registry()
    entries = {e.name: e for e in registry.all_entries()}  # must not raise

    assert entries["fake-broken"].status == "broken"
    assert entries["fake-broken"].reason == "RuntimeError: the plugin exploded at import"
    assert entries["fake-missing-dep"].status == "broken"
    assert entries["fake-missing-dep"].reason.startswith("ModuleNotFoundError")
    assert "fakeplugin_dependency_that_is_not_installed" in entries["fake-missing-dep"].reason
    assert entries["fake-no-attr"].status == "broken" and "AttributeError" in entries["fake-no-attr"].reason
    assert entries["fake-not-spec"].status == "broken" and "not an AgentSpec" in entries["fake-not-spec"].reason
    for name in ("fake-fine", "sac", "sac-icm", "toolkit-envs"):
        assert entries[name].status == "ok", (name, entries[name].reason)

    assert registry.agent("fake-fine").name == "fake-fine"
    assert {s.name for s in registry.agents()} >= {"fake-fine", "sac", "sac-icm"}
    assert not {"fake-broken", "fake-not-spec"} & {s.name for s in registry.agents()}
    with pytest.raises(ToolkitError) as err:
        registry.agent("fake-broken")
    message = str(err.value)
    assert "fake-broken" in message and "fake-mixed" in message and "broken" in message
    assert "the plugin exploded at import" in message


def test_a_plugin_exiting_at_import_is_only_broken(site: Site) -> None:
    mod = site.unique("exits")
    site.distribution("fake-exit", "1.0", {AGENTS: {"fake-exit": f"{mod}:SPEC"}}, {mod: "raise SystemExit('bye')\n"})
    entries = {e.name: e for e in Registry().all_entries()}
    assert entries["fake-exit"].status == "broken" and "SystemExit" in entries["fake-exit"].reason
    assert entries["sac"].status == "ok"


def test_two_distributions_claiming_one_name_are_a_conflict_naming_both(site: Site) -> None:
    one, two = site.unique("one"), site.unique("two")
    site.distribution("fake-alpha", "1.0", {AGENTS: {"fake-dup": f"{one}:SPEC"}}, {one: agent_spec_source("fake-dup")})
    site.distribution("fake-beta", "2.0", {AGENTS: {"fake-dup": f"{two}:SPEC"}}, {two: agent_spec_source("fake-dup")})
    registry = Registry()

    dup = by_name(registry.all_entries(), "fake-dup")
    assert sorted(e.distribution for e in dup) == ["fake-alpha", "fake-beta"]
    assert all(e.status == "conflict" for e in dup)
    assert all("fake-alpha" in e.reason and "fake-beta" in e.reason for e in dup)
    with pytest.raises(ToolkitError) as err:
        registry.agent("fake-dup")
    assert "fake-alpha" in str(err.value) and "fake-beta" in str(err.value)
    assert "fake-dup" not in {s.name for s in registry.agents()}
    assert registry.agent("sac").name == "sac"  # the others are untouched


def test_a_third_party_claiming_a_first_party_name_conflicts_with_toolkit_rl(site: Site) -> None:
    mod = site.unique("impostor")
    site.distribution("fake-impostor", "9.9", {AGENTS: {"sac": f"{mod}:SPEC"}}, {mod: agent_spec_source("sac")})
    with pytest.raises(ToolkitError) as err:
        Registry().agent("sac")
    assert "toolkit-rl" in str(err.value) and "fake-impostor" in str(err.value)


def test_a_plugin_for_another_api_version_is_incompatible_with_a_clear_message(site: Site) -> None:
    mod = site.unique("future")
    other = PLUGIN_API_VERSION + 1
    site.distribution(
        "fake-future", "3.0", {AGENTS: {"fake-future": f"{mod}:SPEC"}},
        {mod: agent_spec_source("fake-future", api_version=other)},
    )
    registry = Registry()
    [entry] = by_name(registry.all_entries(), "fake-future")
    assert entry.status == "incompatible"
    assert f"plugin API {other}" in entry.reason and f"version {PLUGIN_API_VERSION}" in entry.reason
    assert "fake-future" in entry.reason  # tells the user which distribution to change
    with pytest.raises(ToolkitError, match="incompatible") as err:
        registry.agent("fake-future")
    assert f"plugin API {other}" in str(err.value)
    assert "fake-future" not in {s.name for s in registry.agents()}


def test_an_unknown_name_suggests_close_ones(site: Site) -> None:
    mod = site.unique("named")
    site.distribution("fake-named", "1.0", {AGENTS: {"fake-ddpg": f"{mod}:SPEC"}}, {mod: agent_spec_source("fake-ddpg")})
    registry = Registry()
    with pytest.raises(ToolkitError, match="Did you mean 'sac'") as err:
        registry.agent("sca")
    assert "Unknown agent 'sca'" in str(err.value) and "toolkit list" in str(err.value)
    with pytest.raises(ToolkitError, match="Did you mean 'fake-ddpg'"):
        registry.agent("fake-dpg")
    with pytest.raises(ToolkitError, match="Unknown agent"):
        registry.agent("zzzzzzzz")


# --- laziness and the CLI --------------------------------------------------------------------


def test_listing_every_plugin_imports_no_torch(site: Site) -> None:
    spec_mod, algo_mod, bad = site.unique("lightspec"), site.unique("heavyalgo"), site.unique("bad")
    site.distribution(
        "fake-light", "1.0", {AGENTS: {"fake-light": f"{spec_mod}:SPEC", "fake-bad": f"{bad}:SPEC"}},
        {
            spec_mod: agent_spec_source("fake-light", factory=f"{algo_mod}:make"),
            algo_mod: "import torch\n\ndef make(*args):\n    return torch.nn.Linear(1, 1)\n",
            bad: "raise ImportError('broken on purpose')\n",
        },
    )
    # The template plugin's spec module must be light too.
    site.distribution("toolkit-plugin-template", "0.1.0", {AGENTS: template_entry_points()})
    code = textwrap.dedent(
        f"""
        import json, sys
        from toolkit.registry import AGENTS, registry
        discovered = [e.name for e in registry.entries(AGENTS)]
        imported_by_discovery = {spec_mod!r} in sys.modules or {TEMPLATE_PACKAGE!r} in sys.modules
        statuses = {{e.name: e.status for e in registry.all_entries()}}
        print(json.dumps({{
            "discovered": discovered,
            "imported_by_discovery": imported_by_discovery,
            "statuses": statuses,
            "torch": "torch" in sys.modules,
            "algo": {algo_mod!r} in sys.modules,
        }}))
        """
    )
    paths = [str(site.root), str(TEMPLATE_DIR), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"fake-light", "fake-bad", "ddpg-template", "sac", "sac-icm"} <= set(result["discovered"])
    assert result["imported_by_discovery"] is False
    assert result["statuses"]["fake-light"] == "ok" and result["statuses"]["fake-bad"] == "broken"
    assert result["statuses"]["ddpg-template"] == "ok" and result["statuses"]["sac"] == "ok"
    assert result["torch"] is False, "listing plugins imported torch"
    assert result["algo"] is False, "listing plugins imported an algorithm module"


@pytest.fixture
def cli_registry(site: Site, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A fresh process-wide registry for the CLI, seeing ``site``."""
    monkeypatch.setattr(toolkit.registry, "registry", Registry())
    return site


def invoke_list():
    from typer.testing import CliRunner

    from toolkit.cli import app

    return CliRunner().invoke(app, ["list"], env={"COLUMNS": "400"})


def test_toolkit_list_shows_a_broken_plugin_without_crashing(cli_registry: Site) -> None:
    bad, good = cli_registry.unique("clibad"), cli_registry.unique("cligood")
    cli_registry.distribution(
        "fake-cli-dist", "4.5.6", {AGENTS: {"fake-cli-broken": f"{bad}:SPEC", "fake-cli-ok": f"{good}:SPEC"}},
        {bad: "raise RuntimeError('kaput')\n", good: agent_spec_source("fake-cli-ok")},
    )
    result = invoke_list()
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "fake-cli-dist" in rows["fake-cli-broken"] and "4.5.6" in rows["fake-cli-broken"]
    assert "broken" in rows["fake-cli-broken"] and "RuntimeError: kaput" in rows["fake-cli-broken"]
    assert rows["fake-cli-ok"].rstrip(" │").endswith("ok")
    assert rows["sac"].rstrip(" │").endswith("ok") and "toolkit-rl" in rows["sac"]


def test_toolkit_list_shows_a_reason_with_brackets_verbatim(cli_registry: Site) -> None:
    bad = cli_registry.unique("brackets")
    cli_registry.distribution(
        "fake-brackets", "1.0", {AGENTS: {"fake-brackets": f"{bad}:SPEC"}},
        {bad: "raise ImportError(\"install it with: pip install 'fake-brackets[gpu]'\")\n"},
    )
    result = invoke_list()
    assert result.exit_code == 0, result.output
    assert "fake-brackets[gpu]" in result.output


# --- the template plugin ---------------------------------------------------------------------


def template_entry_points() -> dict[str, str]:
    """The ``toolkit.agents`` entry points the template's pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((TEMPLATE_DIR / "pyproject.toml").read_text())["project"]
    assert project["name"] == "toolkit-plugin-template"
    assert any(dep.startswith("toolkit-rl") for dep in project["dependencies"])
    return dict(project["entry-points"][AGENTS])


def test_template_plugin_loads_acts_learns_and_round_trips(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    import gymnasium as gym
    import numpy as np
    import torch

    from toolkit.agent import Batch
    from toolkit.config import apply_overrides, describe, validate

    entry_points = template_entry_points()
    assert entry_points == {"ddpg-template": "toolkit_plugin_template.spec:DDPG_TEMPLATE"}
    for name in [m for m in sys.modules if m.split(".")[0] == TEMPLATE_PACKAGE]:
        monkeypatch.delitem(sys.modules, name)  # an installed copy must not stand in for the folder
    site.distribution("toolkit-plugin-template", "0.1.0", {AGENTS: entry_points})
    monkeypatch.syspath_prepend(str(TEMPLATE_DIR))

    registry = Registry()
    [entry] = by_name(registry.entries(AGENTS), "ddpg-template")
    spec = registry.agent("ddpg-template")
    assert entry.status == "ok" and entry.distribution == "toolkit-plugin-template"
    assert Path(sys.modules[f"{TEMPLATE_PACKAGE}.spec"].__file__).is_relative_to(TEMPLATE_DIR)
    assert spec.name == "ddpg-template" and spec.kind == "off-policy" and "box" in spec.action_spaces
    assert spec.api_version == PLUGIN_API_VERSION
    assert all(info.help for info in describe(spec.config))

    env = gym.make("Pendulum-v1")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    config = apply_overrides(spec.config(), {"hidden_sizes": "32,32", "batch_size": "16"})
    validate(config)

    def build(seed: int):
        torch.manual_seed(seed)
        return spec.build(config, obs_space, act_space, "cpu")

    agent = build(0)
    assert agent.history_length == 1
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(np.stack([obs_space.sample() for _ in range(5)]), dtype=torch.float32)
    for deterministic in (False, True):
        actions = agent.act(obs, deterministic=deterministic)
        assert actions.shape == (5, *act_space.shape)
        assert all(act_space.contains(a.numpy().astype(act_space.dtype)) for a in actions)
    assert torch.equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))

    def batch(n: int = 16) -> Batch:
        def sample(space):
            return torch.as_tensor(np.stack([space.sample() for _ in range(n)]), dtype=torch.float32)

        return Batch(sample(obs_space), sample(act_space), torch.as_tensor(rng.normal(size=(n, 1)), dtype=torch.float32),
                     sample(obs_space), torch.zeros(n, 1))

    before = agent.act(obs, deterministic=True)
    metrics = agent.update(batch())
    assert metrics and all(isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    assert not torch.equal(before, agent.act(obs, deterministic=True)), "an update must move the policy"

    saved = io.BytesIO()
    torch.save(agent.state_dict(), saved)
    saved.seek(0)
    fresh = build(1)
    assert not torch.equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    same = batch()
    torch.manual_seed(7)
    a = agent.update(same)
    torch.manual_seed(7)
    b = fresh.update(same)
    assert all(torch.equal(a[k], b[k]) for k in a), "optimiser state must survive the checkpoint"


def test_a_spec_without_api_version_is_incompatible(site: Site) -> None:
    mod = site.unique("noversion")
    source = agent_spec_source("fake-noversion").replace(f"api_version={PLUGIN_API_VERSION!r},", "")
    assert "api_version" not in source
    site.distribution("fake-noversion", "1.0", {AGENTS: {"fake-noversion": f"{mod}:SPEC"}}, {mod: source})
    entries = {e.name: e for e in Registry().all_entries()}
    assert entries["fake-noversion"].status == "incompatible"
    assert "declares no api_version" in entries["fake-noversion"].reason


# --- plugin authors are told early: factories, names, api_version -----------------------------


def invoke_list_check():
    from typer.testing import CliRunner

    from toolkit.cli import app

    return CliRunner().invoke(app, ["list", "--check"], env={"COLUMNS": "400"})


def check_lines(output: str) -> dict[str, str]:
    """``toolkit list --check`` output as ``{plugin name: its line}``."""
    return {line.split(" ", 1)[0]: line for line in output.splitlines() if " (" in line}


def broken_factory_site(site: Site) -> None:
    """Three agents: a factory module that raises on import, one that does not exist, a fine one."""
    spec, algo = site.unique("facspec"), site.unique("facalgo")
    missing = site.unique("nosuchmodule")
    source = "\n".join([
        agent_spec_source("fake-fac-raises", factory=f"{algo}:make").replace("SPEC =", "RAISES ="),
        agent_spec_source("fake-fac-missing", factory=f"{missing}:make").replace("SPEC =", "MISSING ="),
        agent_spec_source("fake-fac-ok", factory=f"{algo}_ok:make"),
    ])
    site.distribution(
        "fake-factories", "0.2", {AGENTS: {
            "fake-fac-raises": f"{spec}:RAISES", "fake-fac-missing": f"{spec}:MISSING", "fake-fac-ok": f"{spec}:SPEC",
        }},
        {
            spec: source,
            algo: "import fakeplugin_dependency_of_the_factory_not_installed\n",
            f"{algo}_ok": "def make(*args):\n    return args\n",
        },
    )


def test_list_check_imports_factories_and_reports_each_problem(cli_registry: Site) -> None:
    broken_factory_site(cli_registry)
    result = invoke_list_check()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = check_lines(result.output)
    raises = lines["fake-fac-raises"]
    assert "broken" in raises and "does not import" in raises and "ModuleNotFoundError" in raises
    assert "fakeplugin_dependency_of_the_factory_not_installed" in raises and "fake-factories 0.2" in raises
    assert "broken" in lines["fake-fac-missing"] and "no module named" in lines["fake-fac-missing"]
    for name in ("fake-fac-ok", "sac", "toolkit-envs", "vae"):
        assert lines[name].endswith(": ok"), lines[name]
    assert "with a problem" in result.output.splitlines()[-1]


def test_list_check_exits_zero_when_every_plugin_is_fine(cli_registry: Site) -> None:
    result = invoke_list_check()
    assert result.exit_code == 0, result.output
    assert all(line.endswith(": ok") for line in check_lines(result.output).values()), result.output
    assert result.output.splitlines()[-1].endswith(", 0 with a problem.")


def test_plain_list_flags_a_factory_module_that_does_not_exist_without_importing_factories(cli_registry: Site) -> None:
    broken_factory_site(cli_registry)
    result = invoke_list()
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "broken" in rows["fake-fac-missing"] and "no module named" in rows["fake-fac-missing"]
    # Importing the factory is what --check is for: plain `list` stays cheap and cannot know.
    assert rows["fake-fac-raises"].rstrip(" │").endswith("ok")


def test_train_with_a_factory_that_fails_to_import_is_one_sentence(site: Site, tmp_path: Path) -> None:
    from conftest import assert_clean_error
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.registry import registry

    broken_factory_site(site)
    registry.refresh()  # the process-wide registry must see the fake distribution
    try:
        run_dir = tmp_path / "run"
        result = CliRunner().invoke(app, ["train", "fake-fac-raises", "--env", "Pendulum-v1", "--steps", "10",
                                          "--run-dir", str(run_dir), "--no-progress"])
        assert_clean_error(result, "fake-fac-raises", "is broken", "does not import",
                           "fakeplugin_dependency_of_the_factory_not_installed", "toolkit list --check")
        assert not run_dir.exists()
        missing = CliRunner().invoke(app, ["train", "fake-fac-missing", "--env", "Pendulum-v1", "--run-dir", str(run_dir)])
        assert_clean_error(missing, "fake-fac-missing", "broken", "no module named")
        assert not run_dir.exists()
    finally:
        registry.refresh()


def test_entry_point_name_different_from_the_spec_name_is_flagged(site: Site) -> None:
    mod = site.unique("alias")
    site.distribution("fake-alias", "1.0", {AGENTS: {"fake-alias": f"{mod}:SPEC"}}, {mod: agent_spec_source("fake-real-name")})
    registry = Registry()
    [entry] = by_name(registry.all_entries(), "fake-alias")
    assert entry.status == "broken"
    assert "'fake-alias'" in entry.reason and "'fake-real-name'" in entry.reason and "same name" in entry.reason
    with pytest.raises(ToolkitError, match="fake-real-name"):
        registry.agent("fake-alias")


@pytest.mark.parametrize("version, described", [
    (str(PLUGIN_API_VERSION), f"the string '{PLUGIN_API_VERSION}'"),
    (float(PLUGIN_API_VERSION), f"the float {float(PLUGIN_API_VERSION)}"),
    (True, "the boolean True"),
])
def test_an_api_version_of_the_wrong_type_says_so(site: Site, version, described) -> None:
    mod = site.unique("strversion")
    site.distribution("fake-strversion", "1.0", {AGENTS: {"fake-strversion": f"{mod}:SPEC"}},
                      {mod: agent_spec_source("fake-strversion", api_version=version)})
    registry = Registry()
    [entry] = by_name(registry.all_entries(), "fake-strversion")
    assert entry.status == "incompatible"
    assert f"api_version must be the integer {PLUGIN_API_VERSION}, got {described}" in entry.reason
    assert "speaks version" not in entry.reason  # not the nonsense "built for API 1, this toolkit speaks 1"
    with pytest.raises(ToolkitError, match="api_version must be the integer"):
        registry.agent("fake-strversion")


def test_entry_check_reports_a_factory_problem_once_and_records_it(site: Site) -> None:
    broken_factory_site(site)
    registry = Registry()
    entries = {e.name: e for e in registry.entries(AGENTS)}
    assert entries["fake-fac-ok"].check() is None and entries["fake-fac-ok"].status == "ok"
    problem = entries["fake-fac-raises"].check()
    assert problem and problem.startswith("its factory ") and "\n" not in problem
    assert entries["fake-fac-raises"].status == "broken" and entries["fake-fac-raises"].reason == problem
    with pytest.raises(ToolkitError, match="does not import"):
        registry.agent("fake-fac-raises")
