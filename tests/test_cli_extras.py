"""`toolkit --version` and the examples in `toolkit train --help`."""

from __future__ import annotations

from toolkit import __version__


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"toolkit {__version__}"


def test_train_help_shows_examples_and_the_installed_learners(cli) -> None:
    result = cli("train", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for fragment in ("toolkit train sac --env Hopper-v4", "toolkit train ppo --env CartPole-v1",
                     "toolkit train vae --dataset digits", "Agents:", "Models:"):
        assert fragment in text, text
    from toolkit.registry import registry

    for name in ("sac", "dqn", "ppo", "vae"):
        assert name in text
    assert {e.name for e in registry.all_entries() if e.kind != "env"} >= {"sac", "vae"}


def test_no_arguments_still_show_help(cli) -> None:
    result = cli()
    assert "train" in result.output and "--version" in result.output
