"""Settings every service shares; each service subclasses with its own env prefix (DATACOOP_<NAME>_)."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_OPERATOR_TOKEN = "datacoop-dev-operator-token"
"""The operator token services take when none is set (a local stack): each of them warns about it."""


def dev_default_warned(value: str, default: str, setting: str) -> str:
    """`value`, with a warning in the log when it is still the development `default` of `setting`
    (a token every local stack shares): what a service does with each of its secrets at start."""
    if value == default:
        logging.getLogger("datacoop.settings").warning("%s is the development default; set a secret one", setting)
    return value


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATACOOP_", extra="ignore")

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    topic_prefix: str = Field("", description="prefix of every topic name; '' in production")
    data_dir: Path = Field(Path("var/data"), description="where the DuckDB projection lives")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    group_id: str | None = Field(None, description="consumer group for scale-out on Apache Kafka; "
                                                   "unset = assign all partitions (one instance)")
    log_level: str = "INFO"
    log_json: bool = True
