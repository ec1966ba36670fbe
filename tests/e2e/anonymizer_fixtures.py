"""Fixtures for the anonymizer's end-to-end tests: consent, vault and anonymizer as processes on one
topic prefix; members with demographics records; checks of a version's guarantees on its Parquet."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.anonymizer.build import PSEUDONYM_COLUMN, pseudonyms, version_key
from services.anonymizer.definition import shared_dir
from tests.e2e.conftest import ServiceProcess
from tests.e2e.vault_fixtures import SERVICE_TOKEN

OPERATOR_TOKEN = "e2e-anonymizer-operator-token-0123"
PSEUDONYM_SECRET = "e2e-pseudonym-master-secret-0123456789"
DATASET = "census-stats"
PURPOSE = "public-statistics"
ADULT_COLUMNS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation",
                 "salary-class"]


def census_definition(k: int = 3, l: int = 2, version: int = 1,  # noqa: E741
                      max_rows_per_member: int | None = None) -> dict[str, Any]:
    """Adult's QIs over the vault's demographics category, salary-class sensitive; `max_rows_per_member`
    only when given (else the definition's default, 1)."""
    qis = {c: {"csv": f"data/adult/adult_hierarchy_{c}.csv"} for c in ADULT_COLUMNS if c != "salary-class"}
    bound = {} if max_rows_per_member is None else {"max_rows_per_member": max_rows_per_member}
    return {"name": DATASET, "version": version, "purpose": PURPOSE, "data_categories": ["demographics"],
            "columns": {"sex": {"type": "categorical", "values": ["Male", "Female"]},
                        "age": {"type": "integer", "min": 17, "max": 90},
                        **{c: {"type": "categorical"} for c in ADULT_COLUMNS[2:-1]},
                        "salary-class": {"type": "categorical", "values": ["<=50K", ">50K"]}},
            "quasi_identifiers": qis, "sensitive": ["salary-class"],
            "privacy": {"k": k, "l": l, "l_kind": "distinct", "suppression_limit": 0.1, **bound},
            "aggregates": {"epsilon": 1.0, "mechanism": "laplace", "value_column": "age", "value_bounds": [17, 90]}}


def adult_rows(start: int, count: int) -> str:
    """`count` rows of UCI Adult from `start`, as JSON lines for the demographics category."""
    with (shared_dir() / "data" / "adult" / "adult.csv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))[start:start + count]
    return "".join(json.dumps({**r, "age": int(r["age"])}) + "\n" for r in rows)


@pytest.fixture
def anonymizer_env(service_env: dict[str, str], tmp_path: Path) -> Callable[[ServiceProcess], dict[str, str]]:
    def env(vault: ServiceProcess) -> dict[str, str]:
        return {**service_env, "DATACOOP_VAULT_URL": vault.url, "DATACOOP_VAULT_SERVICE_TOKEN": SERVICE_TOKEN,
                "DATACOOP_ANONYMIZER_OPERATOR_TOKEN": OPERATOR_TOKEN,
                "DATACOOP_ANONYMIZER_PSEUDONYM_KEY": PSEUDONYM_SECRET,
                "DATACOOP_ANONYMIZER_OBJECT_STORE": str(tmp_path / "objects"),
                "DATACOOP_ANONYMIZER_DEBOUNCE_S": "0.5", "DATACOOP_ANONYMIZER_POLL_S": "0.2",
                "DATACOOP_ANONYMIZER_MIN_INTERVAL_S": "0"}
    return env


def pseudonym_of(member: str, version: int, dataset_id: str = DATASET) -> str:
    """The member's pseudonym in `version` of `dataset_id` (each version has its own key)."""
    return pseudonyms(version_key(PSEUDONYM_SECRET.encode(), dataset_id, version), [member])[member]


def read_version(version: dict[str, Any]) -> Any:
    """The version's Parquet as a pyarrow table, after checking its sha256 against the event's."""
    path = Path(version["location"].removeprefix("file://"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version["sha256"]
    return pq.read_table(path)


def check_guarantees(table: Any, quasi_identifiers: list[str], sensitive: list[str], k: int, l: int) -> None:  # noqa: E741
    """Group the published rows by their QIs: every class holds >= k distinct members (pseudonyms: k counts
    people, not rows) and >= l distinct sensitive values."""
    assert PSEUDONYM_COLUMN in table.column_names
    rows = table.to_pylist()
    classes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        classes.setdefault(tuple(row[q] for q in quasi_identifiers), []).append(row)
    for key, members in classes.items():
        people = len({m[PSEUDONYM_COLUMN] for m in members})
        assert people >= k, f"class {key} has {len(members)} rows of {people} < k={k} members"
        for s in sensitive:
            assert len({m[s] for m in members}) >= l, f"class {key} has < l={l} values of {s}"
