"""`datacoop query` prints the answer as a reader takes it in: a table of the noisy cells (rounded), the noise
of each figure and the budget spent and left; --json gives the marketplace's answer whole. And `refunds --all`
with nothing to list says there is nothing unmatched or refunded (not only nothing waiting)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from services.marketplace import client as market_client

OID = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"
ENV = {"COLUMNS": "200", "DATACOOP_API_KEY": "dcr_" + "a" * 43}
NOWHERE = "http://127.0.0.1:9"

GROUPED = {"query_id": "4c1d0a52-7e8f-4a43-9d4c-2b0a9e1f7c11", "order_id": OID, "aggregate": "sum",
           "column": "income", "group_by": ["sex"], "epsilon": 0.25, "budget_remaining": 0.75,
           "noise": {"mechanism": "laplace", "sensitivity": {"count": 3.0, "sum": 300000.0},
                     "count_scale": 24.0, "count_std": 33.941125496954285,
                     "sum_scale": 2400000.0, "sum_std": 3394112.5496954285,
                     "partition_selection": {"threshold": 418.6543210987, "delta": 1e-06,
                                             "rule": "a group-by cell is released only when its noisy count exceeds "
                                                     "the threshold; an absent cell may be empty or small"}},
           "cells": [{"group": {"sex": "F"}, "count": 21.62308064997242, "sum": 1234567.891234},
                     {"group": {"sex": None}, "count": 530.0412, "sum": -88.26}]}
MEAN = {"query_id": "q-2", "order_id": OID, "aggregate": "mean", "column": "age", "group_by": [], "epsilon": 0.5,
        "budget_remaining": 0.0, "noise": {"mechanism": "laplace", "sensitivity": {"count": 1.0, "sum": 100.0},
                                          "count_scale": 4.0, "count_std": 5.656854249492381, "sum_scale": 400.0,
                                          "sum_std": 565.6854249492381},
        "cells": [{"mean": 38.61234567}]}


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """answered(answer, *flags) -> the CLI's result of `datacoop query` when the marketplace answers `answer`."""
    query_file = tmp_path / "q.json"
    query_file.write_text('{"aggregate": "count", "epsilon": 0.25}')

    def run(answer: dict[str, Any], *flags: str) -> Any:
        monkeypatch.setattr(market_client.ResearcherClient, "query", lambda self, order_id, body: answer)
        return CliRunner().invoke(app, ["query", OID, str(query_file), "--market-url", NOWHERE, *flags], env=ENV)

    return run


def test_a_grouped_answer_is_a_table_of_rounded_cells_with_its_noise_and_budget(answered: Any) -> None:
    result = answered(GROUPED)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "{" not in out and "21.62308064997242" not in out, "no raw JSON, no 15 decimals"
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["F"], ["(null)"])}
    assert rows["F"][1:] == ["21.6", "1,234,567.9"] and rows["(null)"][1:] == ["530.0", "-88.3"], out
    said = " ".join(out.split())
    assert "sum of income by sex" in said and GROUPED["query_id"] in said and OID in said
    assert "count scale b 24 (std 33.9, sensitivity 3)" in said, said
    assert "sum scale b 2,400,000 (std 3,394,113, sensitivity 300,000)" in said, said
    assert "noise (laplace)" in said
    assert "threshold 418.7 noisy rows, δ 1e-06" in said and "an absent cell may be empty or small" in said
    assert "this query spent ε 0.25; ε 0.75 left on the order" in said


def test_a_mean_is_shown_to_three_significant_digits(answered: Any) -> None:
    result = answered(MEAN)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "noisy mean" in said and " 38.6" in said and "38.61" not in said, said
    assert "mean of age;" in said and "spent ε 0.5; ε 0 left" in said


def test_a_withheld_mean_is_explained(answered: Any) -> None:
    result = answered({**MEAN, "group_by": ["sex"], "cells": [{"group": {"sex": "F"}, "mean": 40.2},
                                                              {"group": {"sex": "M"}, "mean": None}]})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "M -" in said and "a mean shown as - is withheld: its cell's noisy count was below 1" in said, said
    shown = answered(MEAN)
    assert "withheld" not in shown.output, "said only when a mean is missing"


def test_a_mean_clamped_to_a_bound_is_noted(answered: Any, tmp_path: Path) -> None:
    """A mean of 11 rows at ε 0.2 came back 0, the lower bound, twice, and nothing said the noise had swamped it."""
    query_file = tmp_path / "q.json"
    query_file.write_text('{"aggregate": "mean", "column": "age", "bounds": [0, 100], "epsilon": 0.5}')
    result = answered({**MEAN, "cells": [{"mean": 0.0}]})
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 of 1 noisy mean(s) came out at a bound of [0, 100]" in said, said
    assert "clamped" not in " ".join(answered(MEAN).output.split()), "a mean inside the bounds needs no note"


def test_an_answer_without_released_cells_says_why(answered: Any) -> None:
    result = answered({**GROUPED, "cells": []})
    assert result.exit_code == 0, result.output
    assert "no cell was released: none had a noisy count above the threshold (418.7 rows)" in \
        " ".join(result.output.split())


def test_json_prints_the_marketplaces_answer_whole(answered: Any) -> None:
    result = answered(GROUPED, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == GROUPED


def test_refunds_all_with_nothing_unmatched_nor_refunded_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("datacoop.cli.market._market_get", lambda url, path: [])
    every = CliRunner().invoke(app, ["refunds", "--all", "--market-url", NOWHERE], env=ENV)
    assert every.exit_code == 0, every.output
    assert "no unmatched or refunded payment" in every.output and "waits for a refund" not in every.output
    waiting = CliRunner().invoke(app, ["refunds", "--market-url", NOWHERE], env=ENV)
    assert waiting.exit_code == 0 and "no payment waits for a refund" in waiting.output, waiting.output


@pytest.mark.parametrize(("offer", "fault"), [
    ("adult-census:downlaod", "(unknown offer 'downlaod'; did you mean download?)"),
    ("adult_census:download", "(dataset id 'adult_census': lower-case letters, digits and hyphens"),
    ("adult-census@x:query", "(version 'x' is not a number)"),
    ("adult-census", "(no `:OFFER` at its end)"),
])
def test_an_offer_that_does_not_parse_names_the_part_at_fault(offer: str, fault: str) -> None:
    """`order adult-census:downlaod` said only that the text was not DATASET:OFFER."""
    result = CliRunner().invoke(app, ["order", offer, "--market-url", NOWHERE], env=ENV)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"offer {offer!r} is not DATASET:OFFER" in said and fault in said, said
