"""Where dataset versions' Parquet files are kept: a local folder (file:// or a bare path) or an
S3-compatible store (s3://bucket/key), one small API for the anonymizer, the marketplace and the worker.

    url = join("s3://bucket/prefix", "census", "v3.parquet")  # s3://bucket/prefix/census/v3.parquet
    write_bytes(url, data)
    with open_read(url) as stream: ...                          # or read_bytes(url)

S3 goes through pyarrow.fs.S3FileSystem. Endpoint and credentials come from an `S3Options` passed in, or
else the environment: DATACOOP_S3_ENDPOINT_URL (e.g. http://127.0.0.1:9000 for MinIO; unset = AWS),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) and AWS_REGION (or AWS_DEFAULT_REGION).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

ENDPOINT_ENV = "DATACOOP_S3_ENDPOINT_URL"
_HINT = (f"set {ENDPOINT_ENV} (for a non-AWS server), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION "
         "to reach the store")


class ObjectStoreError(OSError):
    """An object could not be read or written; the message names the URL and what to check."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """No object at that URL."""


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None  # http(s)://host:port; None = AWS
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls) -> S3Options:
        env = os.environ.get
        return cls(endpoint_url=env(ENDPOINT_ENV) or None, access_key=env("AWS_ACCESS_KEY_ID") or None,
                   secret_key=env("AWS_SECRET_ACCESS_KEY") or None,
                   session_token=env("AWS_SESSION_TOKEN") or None,
                   region=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or None)


def is_s3(url: str | Path) -> bool:
    return isinstance(url, str) and url.startswith("s3://")


def join(base: str | Path, *parts: str) -> str:
    """base/part/part: an s3:// URL stays one (no doubled slashes); a folder or file:// URL gives a path."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(local_path(base).joinpath(*parts))


def local_path(url: str | Path) -> Path:
    """The path of a file:// URL or bare path (s3:// is refused)."""
    if isinstance(url, Path):
        return url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a bare path (or a drive letter)
        return Path(url)
    raise ObjectStoreError(f"{url}: {parsed.scheme}:// is not an object store scheme here; use a local "
                           "folder, file:// or s3://")


def split_s3(url: str) -> tuple[str, str]:
    """s3://bucket/key -> ("bucket", "key")."""
    parsed = urlparse(url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket:
        raise ObjectStoreError(f"{url}: not an s3://bucket/key URL")
    return bucket, key


@functools.lru_cache(maxsize=8)
def _filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"access_key": options.access_key, "secret_key": options.secret_key,
                              "session_token": options.session_token, "region": options.region,
                              "connect_timeout": 5.0, "request_timeout": 30.0,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if options.endpoint_url:
        endpoint = urlparse(options.endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise ObjectStoreError(f"{ENDPOINT_ENV}={options.endpoint_url!r}: expected http(s)://host[:port]")
        kwargs |= {"scheme": endpoint.scheme, "endpoint_override": endpoint.netloc}
    if options.access_key is None:  # let the AWS SDK find credentials (profile, instance role, ...)
        del kwargs["access_key"], kwargs["secret_key"], kwargs["session_token"]
    return pafs.S3FileSystem(**kwargs)


def filesystem(options: S3Options | None = None) -> pafs.S3FileSystem:
    return _filesystem(options or S3Options.from_env())


def _fail(url: str, action: str, exc: Exception) -> ObjectStoreError:
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(f"{url}: no such object in the object store ({exc})")
    return ObjectStoreError(f"cannot {action} {url}: {exc}; {_HINT}")


def open_read(url: str | Path, options: S3Options | None = None) -> IO[bytes]:
    """A binary stream of the object (close it, or use `with`)."""
    if not is_s3(url):
        path = local_path(url)
        try:
            return path.open("rb")
        except OSError as exc:
            raise _fail(str(url), "read", exc) from exc
    url = str(url)
    bucket, key = split_s3(url)
    try:
        return cast(IO[bytes], filesystem(options).open_input_stream(f"{bucket}/{key}"))
    except (OSError, ValueError) as exc:  # pyarrow: FileNotFoundError, OSError (network, auth), ...
        raise _fail(url, "read", exc) from exc


def read_bytes(url: str | Path, options: S3Options | None = None) -> bytes:
    with open_read(url, options) as stream:
        try:
            return stream.read()
        except OSError as exc:
            raise _fail(str(url), "read", exc) from exc


def write_bytes(url: str | Path, data: bytes, options: S3Options | None = None) -> str:
    """Write the whole object (a local file atomically: temp file, rename); returns its URL."""
    if not is_s3(url):
        path = local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path.resolve().as_uri()
    url = str(url)
    bucket, key = split_s3(url)
    if not key:
        raise ObjectStoreError(f"{url}: no object key after the bucket")
    try:  # an S3 PUT is all-or-nothing: readers see the old object or the new one, never half
        with filesystem(options).open_output_stream(f"{bucket}/{key}") as out:
            out.write(data)
    except (OSError, ValueError) as exc:
        raise _fail(url, "write", exc) from exc
    return url
