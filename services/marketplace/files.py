"""Where a version's Parquet file lies, and the check that it is the file that was published."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse


class FileUnavailable(Exception):
    """The version's file is not reachable here, or differs from what was published."""


class VersionFiles:
    def __init__(self, object_store_dir: Path) -> None:
        self.root = object_store_dir
        self._verified: dict[tuple[str, str], tuple[int, int]] = {}

    def resolve(self, location: str) -> Path:
        """file:// URLs and paths (relative ones under the object store folder); s3:// is not implemented."""
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
        elif parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # a bare path (or a drive letter)
            path = Path(location)
            if not path.is_absolute():
                path = self.root / path
        else:
            raise FileUnavailable(f"location {location} uses {parsed.scheme}://, which this marketplace cannot "
                                  "read; serve the object store as a local folder (file://)")
        return path

    def verified(self, location: str, sha256: str) -> Path:
        """The file's path once its SHA-256 matches the published one (re-checked when the file changes)."""
        path = self.resolve(location)
        try:
            stat = path.stat()
        except OSError as exc:
            raise FileUnavailable(f"the file of this version ({location}) is missing from the object store") \
                from exc
        stamp = (stat.st_size, stat.st_mtime_ns)
        if self._verified.get((location, sha256)) == stamp:
            return path
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise FileUnavailable(f"the file at {location} does not match the published sha256; it was altered "
                                  "or replaced, so it is not served")
        self._verified[(location, sha256)] = stamp
        return path


def stream(path: Path, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(chunk_bytes), b"")
