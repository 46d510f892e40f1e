"""First-party bridges: stable-baselines3 and RLlib algorithms as toolkit agents.

Each bridged agent is an :class:`toolkit.external.ExternalAgent` (kind ``"external"``): its
library trains it, the toolkit runs everything around it (run directory, metrics, evaluation,
checkpoints, resume, sweeps, plots). They are registered through entry points exactly as a
third party's bridge would be; ``sb3_spec`` and ``rllib_spec`` stay light (no torch, no
library imports), the algorithms in ``sb3`` and ``rllib`` import their library when built.
See ``docs/bridges.md``.
"""
