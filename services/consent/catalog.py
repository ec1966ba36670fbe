"""The catalog of purposes and data categories: catalog.yaml beside this file is the current version, and
catalog-history/v<N>.yaml keeps every version ever published, frozen. Every consent records the version it
was granted under; its receipt describes the purposes and categories in that version's words.

Loading refuses a catalog that breaks those rules (CatalogError, naming the fix): a current version without its
frozen copy, or differing from it (an edit without a version bump), and a version that drops or renames an
entry of an earlier one (consents name it, and receipts describe it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from datacoop.kit.settings import SettingRefused

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
HISTORY_DIR = Path(__file__).with_name("catalog-history")


class CatalogError(SettingRefused):
    """The catalog files break a versioning rule; the message says which and how to mend it (a service built
    with them refuses to start, exit 2, as for a setting it cannot use)."""


@dataclass(frozen=True)
class Catalog:
    version: int
    purposes: dict[str, str]
    categories: dict[str, str]
    history: dict[int, Catalog] = field(default_factory=dict, compare=False, repr=False)

    def at(self, version: int) -> Catalog:
        """The catalog as it was at `version` (this one when that version is not kept)."""
        return self.history.get(version, self)

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


def _read(path: Path) -> Catalog:
    raw: Any = yaml.safe_load(path.read_text())
    return Catalog(int(raw["version"]), dict(raw["purposes"]), dict(raw["categories"]))


@lru_cache(maxsize=1)
def load_catalog(path: Path = CATALOG_FILE, history_dir: Path = HISTORY_DIR) -> Catalog:
    current = _read(path)
    kept = {c.version: c for c in map(_read, sorted(history_dir.glob("v*.yaml")))}
    frozen = kept.get(current.version)
    if frozen is None:
        raise CatalogError(f"{path} is version {current.version}, which has no frozen copy: copy it to "
                           f"{history_dir / f'v{current.version}.yaml'} (every published version is kept there)")
    if (frozen.purposes, frozen.categories) != (current.purposes, current.categories):
        raise CatalogError(f"{path} differs from its published version {current.version} "
                           f"({history_dir / f'v{current.version}.yaml'}): consents granted under it name that "
                           "wording; bump `version`, then copy the new catalog to the history folder")
    for version, earlier in sorted(kept.items()):
        for kind, names, now in (("purpose", earlier.purposes, current.purposes),
                                 ("category", earlier.categories, current.categories)):
            gone = sorted(set(names) - set(now))
            if gone:
                raise CatalogError(f"catalog version {current.version} drops the {kind}(s) {', '.join(gone)} of "
                                   f"version {version}: consents granted under it name them; keep every entry "
                                   "(add new ones, never remove or rename one)")
    return Catalog(current.version, current.purposes, current.categories, history=kept)
