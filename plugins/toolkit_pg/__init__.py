"""First-party policy-gradient plugins: ``reinforce``, ``a2c``, ``ppo`` and ``ppo-icm``.

Registered in the project's pyproject.toml under ``toolkit.agents`` exactly as a third
party's package would register its own agents.
"""
