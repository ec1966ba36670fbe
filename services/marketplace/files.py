"""Where a version's Parquet file lies, and the check that it is the file that was published."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from datacoop import objectstore


class FileUnavailable(Exception):
    """The version's file is not reachable here, or differs from what was published."""


class VersionFiles:
    def __init__(self, object_store_dir: Path, cache_dir: Path | None = None) -> None:
        self.root = object_store_dir
        self.cache_dir = cache_dir if cache_dir is not None else object_store_dir / ".s3-cache"
        self._verified: dict[tuple[str, str], tuple[int, int]] = {}

    def resolve(self, location: str) -> Path:
        """file:// URLs and paths (relative ones under the object store folder); s3:// goes through `verified`."""
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
        elif parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # a bare path (or a drive letter)
            path = Path(location)
            if not path.is_absolute():
                path = self.root / path
        else:
            raise FileUnavailable(f"location {location} uses {parsed.scheme}://, which this marketplace cannot "
                                  "read; use a local folder (file://) or an s3:// object store")
        return path

    def verified(self, location: str, sha256: str) -> Path:
        """The file's path once its SHA-256 matches the published one (re-checked when the file changes).
        An s3:// object is streamed into a local cache file, hashed as it comes, and kept only if it matches."""
        if objectstore.is_s3(location):
            return self._fetched(location, sha256)
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

    def _fetched(self, location: str, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise FileUnavailable(f"the published sha256 of {location} is not 64 lowercase hex digits")
        path = self.cache_dir / f"{sha256}.parquet"
        try:
            stat = path.stat()
            if self._verified.get((location, sha256)) == (stat.st_size, stat.st_mtime_ns):
                return path
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        try:
            with objectstore.open_read(location) as src, tmp.open("wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != sha256:
                raise FileUnavailable(f"the file at {location} does not match the published sha256; it was "
                                      "altered or replaced, so it is not served")
            tmp.replace(path)
        except objectstore.ObjectNotFound as exc:
            raise FileUnavailable(f"the file of this version ({location}) is missing from the object store") \
                from exc
        except OSError as exc:
            raise FileUnavailable(f"the file of this version cannot be read: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        stat = path.stat()
        self._verified[(location, sha256)] = (stat.st_size, stat.st_mtime_ns)
        return path


def stream(path: Path, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(chunk_bytes), b"")
