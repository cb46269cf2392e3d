"""Adapter Studio: no-code fine-tuning of language models on your own workstation.

The installed program under one import name. Its parts live in the repository's top-level folders
and are mapped here by pyproject.toml's package-dir: `adapter_studio.engine` (engine/, Qt-free),
`adapter_studio.gui` (gui/, the window), `adapter_studio.resources` (resources/, data files). This
folder holds only what sits above both: the version and the command line (`adapter_studio.cli`),
whose default command opens the window.
"""

__version__ = "0.1.0"
