"""config.json: one validated settings model, its checks against the machine, and defaults.

schema.py    the pydantic models (Config, LaneConfig, ModelSpec, ...)
checks.py    cross-field and machine checks
load.py      reading a file, with errors that quote the value and say what is allowed
defaults.py  the layout built from the machine when no file is given
"""

from ris.config.checks import check_config
from ris.config.defaults import default_config, default_models
from ris.config.load import load_config, parse_config
from ris.config.schema import (
    Config,
    ConfigError,
    LaneConfig,
    ModelSpec,
    PreemptionConfig,
    RetentionConfig,
    ServerConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "LaneConfig",
    "ModelSpec",
    "PreemptionConfig",
    "RetentionConfig",
    "ServerConfig",
    "check_config",
    "default_config",
    "default_models",
    "load_config",
    "parse_config",
]
