"""Settings of the anonymizer service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from datacoop.kit.settings import DEV_OPERATOR_TOKEN, ServiceSettings
from services.vault.settings import DEV_SERVICE_TOKEN as DEV_VAULT_TOKEN


class AnonymizerSettings(ServiceSettings):
    port: int = Field(8103, ge=0, le=65535)
    vault_url: str = Field("http://127.0.0.1:8102", description="the vault's base URL (internal decrypt API)")
    vault_service_token: str = Field(DEV_VAULT_TOKEN, min_length=16,
                                     description="bearer token for the vault's POST /internal/decrypt")
    anonymizer_operator_token: str = Field(DEV_OPERATOR_TOKEN, min_length=16,
                                           description="bearer token of the operator API (definitions, builds)")
    anonymizer_object_store: str = Field("", description="where versions are written: a local folder, a file:// "
                                                         "URL or s3://bucket/prefix (endpoint and credentials: "
                                                         "DATACOOP_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                                                         "AWS_SECRET_ACCESS_KEY, AWS_REGION); default "
                                                         "<data_dir>/objects")
    anonymizer_pseudonym_key: str | None = Field(None, description="master secret (hex or text) per-dataset "
                                                 "pseudonym keys derive from; unset = <data_dir>/"
                                                 "anonymizer-pseudonym-key, generated (development only)")
    anonymizer_definitions_dir: Path | None = Field(None, description="dataset definitions loaded at start; "
                                                    "default <repo>/datasets")
    anonymizer_debounce_s: float = Field(5.0, ge=0, description="quiet time after a consent, erasure or record "
                                         "change before a new version is built")
    anonymizer_max_wait_s: float = Field(300.0, gt=0, description="the longest a change waits for that quiet: "
                                         "contributions arriving without a pause still get a version")
    anonymizer_min_interval_s: float = Field(900.0, ge=0, description="fewest seconds between a dataset's builds "
                                             "started by changes (each replaces the version on sale, whose unpaid "
                                             "orders can then no longer be paid: keep it in step with the offers' "
                                             "order_ttl_s); a member who left still takes versions off sale at "
                                             "once, and builds on demand are not held back")
    anonymizer_poll_s: float = Field(0.5, gt=0, description="how often the builder looks for work")
    anonymizer_mode: Literal["global", "multidimensional"] = Field("global",
                                                                   description="anonymization mode of the engine")
