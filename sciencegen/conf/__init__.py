"""Hydra configs shipped with the package (config groups in sub-folders).

Importing this package (``initialize_config_module("sciencegen.conf")`` does) registers the structured-config
schemas the group options name in their ``defaults`` (:func:`sciencegen.config.register`).
"""

from ..config import register as _register

_register()
