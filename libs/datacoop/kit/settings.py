"""Settings every service shares; each service subclasses with its own env prefix (DATACOOP_<NAME>_)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_OPERATOR_TOKEN = "datacoop-dev-operator-token"
"""The operator token services take when none is set (a local stack): each of them warns about it."""

ChainId = Annotated[int, Field(ge=1, lt=2**256)]
"""DATACOOP_CHAIN_ID: the EIP-712 domain's chainId, a uint256 from 1. Out of that range every signed request
would fail to hash (a 500 for each), so the service refuses to start instead, naming the variable."""
LOCAL_CHAIN_ID = 31337  # anvil's, the local stack's chain


class SettingRefused(ValueError):
    """A setting a service can't start with: malformed, or a secret missing or left at the value every
    datacoop install shares outside a development stack. The message names the setting and the fix."""


def dev_default_warned(value: str, default: str, setting: str, *, dev_secrets: bool) -> str:
    """`value`, refused while it is still the development `default` of `setting` (a token every local
    stack shares) unless `dev_secrets` (DATACOOP_DEV_SECRETS, which `datacoop up` and the tests set):
    then with a warning in the log. What a service does with each of its secrets at start."""
    if value == default:
        if not dev_secrets:
            raise SettingRefused(
                f"{setting} is the development default, which every datacoop install shares; set a secret one "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or set "
                "DATACOOP_DEV_SECRETS=true on a local development stack")
        logging.getLogger("datacoop.settings").warning("%s is the development default; set a secret one", setting)
    return value


def bootstrap_problem(value: str) -> str | None:
    """What is wrong with a Kafka bootstrap list (host:port[,host:port...]), or None."""
    servers = [part.strip() for part in value.split(",")]
    for server in servers:
        host, colon, port = server.rpartition(":")
        if not server or not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            return (f"{server!r} is not host:port (e.g. 127.0.0.1:9092; several separated by commas): give each "
                    "Kafka broker's host and port")
    return None


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATACOOP_", extra="ignore")

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    topic_prefix: str = Field("", description="prefix of every topic name; '' in production")
    topic_replication: int = Field(1, ge=1, description="replication factor of the topics a service creates when "
                                                        "they are missing (existing ones keep theirs): at most the "
                                                        "number of brokers; 3 on a cluster of three or more")
    data_dir: Path = Field(Path("var/data"), description="where the DuckDB projection lives")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    group_id: str | None = Field(None, description="consumer group for scale-out on Apache Kafka; "
                                                   "unset = assign all partitions (one instance)")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body taken; a larger "
                                                                       "one is refused with 413 before it is read")
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = Field(
        "INFO", description="the least severe log records written; any case (`debug`), WARN and FATAL taken too")
    log_json: bool = True
    dev_secrets: bool = Field(False, description="accept the development defaults of secrets (shared tokens, "
                                                 "a KEK generated beside the data): local development only; "
                                                 "`datacoop up` sets it")

    @field_validator("bootstrap")
    @classmethod
    def _servers(cls, value: str) -> str:
        """host:port[,host:port...], each port a number 1-65535: anything else would be waited on as if it were a
        broker that does not answer yet."""
        problem = bootstrap_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> Any:
        """A level in any case, with logging's aliases: `debug` is DEBUG, WARN WARNING, FATAL CRITICAL."""
        if isinstance(value, str):
            value = value.strip().upper()
            return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(value, value)
        return value
