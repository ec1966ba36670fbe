"""datacoop.objectstore against a real S3-protocol server (moto's, on a free loopback port), and the three
places that use it: the anonymizer's write_parquet, the marketplace's VersionFiles and the worker's fetch."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from datacoop import objectstore
from services.anonymizer.build import write_parquet
from services.anonymizer.service import object_store_dir
from services.anonymizer.settings import AnonymizerSettings
from services.marketplace.files import FileUnavailable, VersionFiles, stream
from services.worker.worker import DataUnavailable, load_verified

BUCKET = "datacoop-versions"
KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                     region_name=REGION).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard environment pointing at the loopback server; the bucket's URL."""
    monkeypatch.setenv(objectstore.ENDPOINT_ENV, s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return f"s3://{BUCKET}"


def _parquet(rows: int = 3) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"age_band": [f"{20 + i}-{29 + i}" for i in range(rows)], "n": list(range(rows))}),
                   sink)
    return sink.getvalue().to_pybytes()


def test_join() -> None:
    assert objectstore.join("s3://b/prefix/", "ds", "v1.parquet") == "s3://b/prefix/ds/v1.parquet"
    assert objectstore.join("s3://b", "ds", "v1.parquet") == "s3://b/ds/v1.parquet"
    assert objectstore.join("/tmp/objects", "ds", "v1.parquet") == "/tmp/objects/ds/v1.parquet"


def test_round_trip(s3: str) -> None:
    url = objectstore.join(s3, "prefix", "roundtrip", "v1.parquet")
    data = b"\x00parquet bytes\xff" * 1000
    assert objectstore.write_bytes(url, data) == url
    assert objectstore.read_bytes(url) == data
    with objectstore.open_read(url) as fh:
        assert fh.read(4) == data[:4]
    objectstore.write_bytes(url, b"replaced")
    assert objectstore.read_bytes(url) == b"replaced"


def test_round_trip_with_explicit_options(s3_endpoint: str) -> None:
    options = objectstore.S3Options(endpoint_url=s3_endpoint, access_key=KEY, secret_key=SECRET, region=REGION)
    url = f"s3://{BUCKET}/explicit/v1.parquet"
    objectstore.write_bytes(url, b"abc", options)
    assert objectstore.read_bytes(url, options) == b"abc"


def test_local_round_trip(tmp_path: Path) -> None:
    url = objectstore.write_bytes(tmp_path / "ds" / "v1.parquet", b"local")
    assert url == (tmp_path / "ds" / "v1.parquet").resolve().as_uri()
    assert objectstore.read_bytes(url) == b"local"


def test_missing_object_is_a_clear_error(s3: str) -> None:
    url = f"{s3}/prefix/nothing-here/v9.parquet"
    with pytest.raises(objectstore.ObjectNotFound, match=url):
        objectstore.read_bytes(url)
    with pytest.raises(objectstore.ObjectNotFound, match="no such object"):
        objectstore.open_read(f"s3://no-such-bucket-{_free_port()}/v1.parquet")


def test_unreachable_endpoint_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    options = objectstore.S3Options(endpoint_url=f"http://127.0.0.1:{_free_port()}", access_key=KEY,
                                    secret_key=SECRET, region=REGION)
    with pytest.raises(objectstore.ObjectStoreError, match=objectstore.ENDPOINT_ENV) as err:
        objectstore.read_bytes(f"s3://{BUCKET}/v1.parquet", options)
    assert f"s3://{BUCKET}/v1.parquet" in str(err.value)


def test_bad_urls() -> None:
    with pytest.raises(objectstore.ObjectStoreError, match="s3://bucket/key"):
        objectstore.split_s3("s3:///key-without-bucket")
    with pytest.raises(objectstore.ObjectStoreError, match="gs://"):
        objectstore.read_bytes("gs://bucket/v1.parquet")


def test_anonymizer_settings_accept_s3(tmp_path: Path) -> None:
    settings = AnonymizerSettings(data_dir=tmp_path, anonymizer_object_store="s3://bucket/prefix/")
    assert object_store_dir(settings) == "s3://bucket/prefix"
    local = AnonymizerSettings(data_dir=tmp_path, anonymizer_object_store=f"file://{tmp_path}/objects")
    assert object_store_dir(local) == tmp_path / "objects"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        object_store_dir(AnonymizerSettings(data_dir=tmp_path, anonymizer_object_store="gs://bucket"))


def test_write_parquet_then_marketplace_and_worker_read_it(s3: str, tmp_path: Path) -> None:
    parquet = _parquet()
    sha = hashlib.sha256(parquet).hexdigest()
    location = write_parquet(f"{s3}/prefix", "census", 3, parquet)
    assert location == f"{s3}/prefix/census/v3.parquet"
    assert objectstore.read_bytes(location) == parquet

    files = VersionFiles(tmp_path / "objects")
    path = files.verified(location, sha)
    assert path.read_bytes() == parquet
    assert b"".join(stream(path)) == parquet
    assert files.verified(location, sha) == path  # cached, still verified
    path.write_bytes(b"tampered locally")  # the cache is re-checked: fetched again from the store
    assert files.verified(location, sha).read_bytes() == parquet

    table = load_verified(location, sha, tmp_path / "unused")
    assert table.num_rows == 3
    assert table.column("n").to_pylist() == [0, 1, 2]


def test_readers_refuse_an_altered_or_missing_object(s3: str, tmp_path: Path) -> None:
    parquet = _parquet()
    sha = hashlib.sha256(parquet).hexdigest()
    location = write_parquet(f"{s3}/prefix", "altered", 1, parquet)
    objectstore.write_bytes(location, _parquet(4))  # replaced after publishing

    files = VersionFiles(tmp_path / "objects")
    with pytest.raises(FileUnavailable, match="does not match the published sha256"):
        files.verified(location, sha)
    assert not list((tmp_path / "objects" / ".s3-cache").iterdir())  # nothing unverified is kept
    with pytest.raises(DataUnavailable, match="does not match the published sha256"):
        load_verified(location, sha, tmp_path)

    missing = f"{s3}/prefix/altered/v2.parquet"
    with pytest.raises(FileUnavailable, match="missing from the object store"):
        files.verified(missing, sha)
    with pytest.raises(DataUnavailable, match="no such object"):
        load_verified(missing, sha, tmp_path)


def test_local_write_parquet_unchanged(tmp_path: Path) -> None:
    parquet = _parquet()
    location = write_parquet(tmp_path, "census", 1, parquet)
    assert location == (tmp_path / "census" / "v1.parquet").resolve().as_uri()
    assert not list((tmp_path / "census").glob("*.tmp"))
    sha = hashlib.sha256(parquet).hexdigest()
    assert VersionFiles(tmp_path).verified(location, sha).read_bytes() == parquet
    assert load_verified(location, sha, tmp_path).num_rows == 3
