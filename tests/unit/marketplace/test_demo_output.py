"""The demo's table of DP queries shows each answer's first cell rounded and in words (`count ≈ 21.6`), not as a
Python dict with 15 decimals."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eth_account import Account
from rich.console import Console

from services.marketplace import demo

VERSION = {"dataset_id": "census-demo", "version": 1, "status": "current", "published_at": "2026-01-01T00:00:00Z",
           "rows": 100, "guarantees": {"k": 5, "l_diversity": 2.0}, "columns": {"sex": "VARCHAR"},
           "query_group_by": ["sex"], "offers": [{"offer": "download", "price_units": 1_000},
                                                  {"offer": "query", "price_units": 2_000}]}
CELLS = [[{"count": 21.62308064997242}], [{"group": {"sex": "F"}, "count": 1234.56789}], [{"mean": 0.012345678}], []]


class _Researcher:
    def __init__(self, url: str, api_key: str) -> None:
        self.asked = 0

    def catalog(self) -> dict[str, Any]:
        return {"versions": [VERSION], "payment": {"token": "0x" + "1" * 40, "market": "0x" + "2" * 40}}

    def order_current(self, dataset_id: str, offer: str) -> dict[str, Any]:
        return {"order_id": f"o-{offer}", "price_units": 1_000}

    def download(self, order_id: str, out: Path) -> dict[str, Any]:
        pq.write_table(pa.table({"sex": ["F"]}), out)
        return {"path": str(out), "bytes": out.stat().st_size}

    def query(self, order_id: str, query: dict[str, Any]) -> dict[str, Any]:
        if self.asked == len(CELLS):
            raise RuntimeError("the budget is spent")
        cells, self.asked = CELLS[self.asked], self.asked + 1
        noise: dict[str, Any] = {"count_scale": 4.0}
        if not cells:
            noise["partition_selection"] = {"threshold": 40.2}
        return {"epsilon": 0.25, "budget_remaining": 1 - 0.25 * self.asked, "noise": noise, "cells": cells}


def test_the_first_cell_of_each_query_is_rounded_and_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "register_researcher", lambda *a: {"researcher_id": "r-1", "api_key": "k"})
    monkeypatch.setattr(demo, "ResearcherClient", _Researcher)
    monkeypatch.setattr(demo, "pay", lambda *a: "0x" + "ab" * 32)
    monkeypatch.setattr(demo, "_wait_paid", lambda *a: None)
    out = io.StringIO()
    demo.researcher_buys("http://market", "http://chain", Account.create().key.hex(),
                         Console(file=out, width=200, color_system=None))
    said = out.getvalue()
    assert "{'count'" not in said and "21.62308" not in said, said
    assert "count ≈ 21.6" in said and "sex=F, count ≈ 1,234.6" in said and "mean ≈ 0.0123" in said, said
    assert "no cell above the threshold (40 noisy rows)" in said and "next query refused" in said
