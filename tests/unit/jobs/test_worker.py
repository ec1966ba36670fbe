"""The worker's edges: it runs only on the file that was published, and the tamper switch bends numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.jobs.domain import agree
from services.worker.worker import DataUnavailable, load_verified, resolve, tamper


def test_a_file_that_differs_from_its_published_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0]}), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_verified(path.as_uri(), sha, tmp_path).num_rows == 2
    assert load_verified("v1.parquet", sha, tmp_path).num_rows == 2
    with pytest.raises(DataUnavailable, match="does not match"):
        load_verified(path.as_uri(), "0" * 64, tmp_path)
    with pytest.raises(DataUnavailable, match="s3://"):
        resolve("s3://bucket/v1.parquet", tmp_path)


def test_tampered_results_disagree_with_honest_ones() -> None:
    honest = {"counts": [1, 2], "mean": 3.5, "converged": True, "names": ["a"]}
    assert not agree(honest, tamper(honest))
    assert tamper(honest)["converged"] is True and tamper(honest)["names"] == ["a"]
