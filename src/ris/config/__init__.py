"""config.json: one validated settings model, its checks against the machine, and defaults.

schema.py    the pydantic models (Config, LaneConfig, ModelSpec, ...), exported here
load.py      reading a file: each lane kind's defaults filled in, then validated and checked,
             with errors that quote the value and say what is allowed
checks.py    cross-field and machine checks
sharing.py   which lanes share hardware: who yields to whom, with which policy
defaults.py  the layout built from the machine when no file is given
profiles.py  one NVIDIA card split by its size: each lane's GPU budget and the models that fit

Only the settings model is exported here: lane kinds (ris.lanes) describe their models with
ModelSpec, while load, checks, sharing and defaults read the lane kinds, so importing those from
this package would close a circle. Import them by module: `from ris.config.load import
parse_config`.
"""

from ris.config.schema import (
    Config,
    ConfigError,
    LaneConfig,
    ModelSpec,
    NamedKey,
    PreemptionConfig,
    RetentionConfig,
    ServerConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "LaneConfig",
    "ModelSpec",
    "NamedKey",
    "PreemptionConfig",
    "RetentionConfig",
    "ServerConfig",
]
