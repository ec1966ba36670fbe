"""The catalog of purposes and data categories (catalog.yaml beside this file, versioned)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")


@dataclass(frozen=True)
class Catalog:
    version: int
    purposes: dict[str, str]
    categories: dict[str, str]

    def unknown_purpose(self, purpose: str) -> str | None:
        if purpose in self.purposes:
            return None
        return f"unknown purpose {purpose!r}; valid purposes: {', '.join(sorted(self.purposes))}"

    def unknown_categories(self, categories: list[str]) -> str | None:
        bad = [c for c in categories if c not in self.categories]
        if not bad:
            return None
        return (f"unknown data categor{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
                f"valid categories: {', '.join(sorted(self.categories))}")


@lru_cache(maxsize=1)
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    raw = yaml.safe_load(path.read_text())
    return Catalog(int(raw["version"]), dict(raw["purposes"]), dict(raw["categories"]))
