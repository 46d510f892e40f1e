"""A template toolkit plugin: a compact DDPG agent for continuous (Box) actions, and a
linear autoencoder model.

Keep this file empty of imports: ``toolkit list`` imports :mod:`toolkit_plugin_template.spec`,
and importing a package runs its ``__init__`` first.
"""

__version__ = "0.1.0"
