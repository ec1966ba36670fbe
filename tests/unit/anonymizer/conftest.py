"""Shared fixtures: the Adult tables and hierarchies from the shared data dir (read once per session)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from services.anonymizer.definition import shared_dir
from services.anonymizer.hierarchy import Hierarchy, from_csv

Columns = dict[str, list[str]]


def adult_dir() -> Path:
    return shared_dir() / "data" / "adult"


def read_table(path: Path) -> Columns:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))
    return {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}


@pytest.fixture(scope="session")
def adult() -> Columns:
    return read_table(adult_dir() / "adult.csv")


@pytest.fixture(scope="session")
def adult_subset() -> Columns:
    return read_table(adult_dir() / "adult_subset.csv")


@pytest.fixture(scope="session")
def adult_hierarchies(adult: Columns) -> dict[str, Hierarchy]:
    return {c: from_csv(c, adult_dir() / f"adult_hierarchy_{c}.csv") for c in adult}
