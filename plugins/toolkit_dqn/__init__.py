"""First-party Deep Q-Network plugins: ``dqn`` and ``dqn-icm``.

Registered in the project's pyproject.toml under ``toolkit.agents`` exactly as a third
party's package would register its own agents.
"""
