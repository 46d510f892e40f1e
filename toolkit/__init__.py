"""toolkit: reinforcement-learning and generative-model learners behind one command line.

Importing this package is cheap on purpose: the CLI and `toolkit list` must start without
loading torch or any plugin. Heavy modules are imported where they are used.
"""

__version__ = "0.1.0"

#: Version of the plugin contract (see docs/plugins.md). A plugin declares the version it
#: was written for in its spec; the registry refuses a plugin built for another major version.
PLUGIN_API_VERSION = 1
