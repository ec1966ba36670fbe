from __future__ import annotations

import pytest

from services.anonymizer.encoding import encode
from services.anonymizer.hierarchy import from_rows
from services.anonymizer.lattice import GlobalRecoding, NoAnonymousNode, exhaustive_search, optimal_search
from services.anonymizer.privacy_model import PrivacyModel

SIX_QIS = ["sex", "age", "race", "marital-status", "education", "workclass"]


@pytest.mark.parametrize("limit", [0.0, 0.01, 0.05, 1.0])
def test_optimal_search_finds_the_exhaustive_optimum_on_the_subset(adult_subset, adult_hierarchies, limit) -> None:
    table = encode(adult_subset, {c: adult_hierarchies[c] for c in SIX_QIS})
    engine = GlobalRecoding(table, PrivacyModel(k=5, suppression_limit=limit))
    fast, full = optimal_search(engine), exhaustive_search(engine)
    assert full.nodes_checked == 720
    assert fast.best.node == full.best.node
    assert fast.best.loss == pytest.approx(full.best.loss, abs=1e-12)
    assert fast.nodes_checked < full.nodes_checked


@pytest.mark.parametrize("limit", [0.0, 0.05, 1.0])
def test_optimal_search_with_l_diversity_matches_exhaustive(adult_subset, adult_hierarchies, limit) -> None:
    table = encode(adult_subset, {c: adult_hierarchies[c] for c in SIX_QIS}, sensitive=["occupation"])
    engine = GlobalRecoding(table, PrivacyModel(k=3, l=3, l_kind="entropy", t=0.5, suppression_limit=limit))
    assert optimal_search(engine).best.node == exhaustive_search(engine).best.node


@pytest.mark.parametrize(("limit", "utility", "suppressed"), [
    (0.0, 0.2917, 0), (0.01, 0.5602, 294), (0.05, 0.6984, 1346), (1.0, 0.7514, 2553)])
def test_adult_with_nine_qis_reproduces_arx_optimum(adult, adult_hierarchies, limit, utility, suppressed) -> None:
    engine = GlobalRecoding(encode(adult, adult_hierarchies), PrivacyModel(k=5, suppression_limit=limit))
    best = optimal_search(engine).best
    assert 1 - best.loss == pytest.approx(utility, abs=5e-5)
    assert best.suppressed_rows == suppressed


def test_suppression_is_monotone_along_the_lattice(adult_subset, adult_hierarchies) -> None:
    engine = GlobalRecoding(encode(adult_subset, {c: adult_hierarchies[c] for c in SIX_QIS}),
                            PrivacyModel(k=5, suppression_limit=1.0))
    nodes = engine.all_nodes()
    suppressed = {tuple(n): engine.check(n).suppressed_rows for n in nodes}
    for node, rows in suppressed.items():
        for i in range(len(node)):
            up = tuple(v + (j == i) for j, v in enumerate(node))
            if up in suppressed:
                assert suppressed[up] <= rows


def test_an_impossible_model_is_refused_with_advice(adult_subset, adult_hierarchies) -> None:
    few = encode({"sex": adult_subset["sex"][:3]}, {"sex": adult_hierarchies["sex"]})
    with pytest.raises(NoAnonymousNode, match=r"only 3 row\(s\): k=5 needs at least 5 in a class"):
        optimal_search(GlobalRecoding(few, PrivacyModel(k=5)))
    with pytest.raises(NoAnonymousNode, match=r"lower k, or lower privacy.max_rows_per_member \(now 30"):
        optimal_search(GlobalRecoding(few, PrivacyModel(k=3, max_rows_per_member=30)))
    one_value = {"q": ["a"] * 6 + ["b"], "s": ["x"] * 7}  # enough rows, never 2 sensitive values in a class
    table = encode(one_value, {"q": from_rows("q", [["a", "*"], ["b", "*"]])}, ["s"])
    with pytest.raises(NoAnonymousNode, match="raise the suppression limit, lower k/l") as refused:
        optimal_search(GlobalRecoding(table, PrivacyModel(k=2, l=2)))
    assert "t=None" not in str(refused.value) and "NoAnonymousNode" not in str(refused.value)


def test_entropy_diversity_with_suppression_is_searched_without_tagging() -> None:
    # Generalizing 'a' and 'b' merges a diverse class into a skewed one: the top node suppresses
    # more than the bottom one, so tagging from the top would wrongly rule the bottom out.
    hierarchy = from_rows("q", [["a", "*"], ["b", "*"]])
    table = encode({"q": ["a", "a", *["b"] * 10], "s": ["x", "y", *["x"] * 10]}, {"q": hierarchy}, ["s"])
    engine = GlobalRecoding(table, PrivacyModel(k=2, l=2, l_kind="entropy", suppression_limit=10 / 12))
    assert engine.check((1,)).anonymous is False
    found = optimal_search(engine).best
    assert found.node == exhaustive_search(engine).best.node == (0,)
    assert found.suppressed_rows == 10
