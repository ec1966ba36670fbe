from __future__ import annotations

import math

import numpy as np
import pytest

from services.anonymizer.dp import DPError, cell_aggregates, gaussian_sigma, noise


def test_a_seeded_rng_gives_reproducible_releases() -> None:
    keys = ["a", "a", "b"]
    first = cell_aggregates(keys, 1.0, np.random.default_rng(7), [1.0, 2.0, 3.0], (0.0, 10.0))
    again = cell_aggregates(keys, 1.0, np.random.default_rng(7), [1.0, 2.0, 3.0], (0.0, 10.0))
    assert first == again
    assert [c.cell for c in first] == ["a", "b"]


def test_laplace_noise_has_scale_sensitivity_over_epsilon() -> None:
    draws = noise("laplace", 0.5, 2.0, 200_000, np.random.default_rng(1))
    assert np.mean(np.abs(draws)) == pytest.approx(4.0, rel=0.02)  # E|Lap(b)| = b = 2 / 0.5


def test_counts_only_spend_the_whole_epsilon() -> None:
    rng = np.random.default_rng(3)
    errors = [cell_aggregates(["a"] * 100, 2.0, rng)[0].count - 100 for _ in range(20_000)]
    assert np.mean(np.abs(errors)) == pytest.approx(0.5, rel=0.05)


def test_sums_are_clamped_before_noise() -> None:
    rng = np.random.default_rng(0)
    out = cell_aggregates(["a"] * 1000, 1e6, rng, [1e9] * 1000, (0.0, 10.0))[0]
    assert out.total == pytest.approx(10_000, abs=1.0)
    assert out.mean == pytest.approx(10.0, abs=0.01)


def test_gaussian_sigma_meets_delta_and_beats_the_classic_bound() -> None:
    sigma = gaussian_sigma(0.5, 1e-6, 1.0)
    classic = math.sqrt(2 * math.log(1.25 / 1e-6)) / 0.5
    assert sigma < classic
    assert gaussian_sigma(0.5, 1e-6, 2.0) == pytest.approx(2 * sigma, rel=1e-6)


def test_the_full_cell_domain_is_released_even_where_empty() -> None:
    out = cell_aggregates(["a"], 1.0, np.random.default_rng(0), cells=["a", "b"])
    assert [c.cell for c in out] == ["a", "b"]
    with pytest.raises(DPError, match="not among the given cells"):
        cell_aggregates(["c"], 1.0, np.random.default_rng(0), cells=["a"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epsilon": 0.0}, "epsilon"), ({"epsilon": 1.0, "mechanism": "gaussian"}, "needs delta")])
def test_no_privacy_is_refused(kwargs, message) -> None:
    with pytest.raises(DPError, match=message):
        noise(kwargs.get("mechanism", "laplace"), kwargs["epsilon"], 1.0, 1, np.random.default_rng(0))


def test_noise_scales_with_the_rows_one_member_may_have() -> None:
    """One member's 3 rows change the counts by 3 (and a clamped sum by 3 * bound): 3 times the noise."""
    rng = np.random.default_rng(5)
    draws = [cell_aggregates(["a"] * 100, 1.0, rng, [5.0] * 100, (0.0, 10.0), rows_per_member=3)[0]
             for _ in range(20_000)]
    assert np.mean([abs(c.count - 100) for c in draws]) == pytest.approx(3 / 0.5, rel=0.05)
    assert np.mean([abs(c.total - 500) for c in draws]) == pytest.approx(3 * 10 / 0.5, rel=0.05)
    gaussian = [cell_aggregates(["a"], 1.0, rng, mechanism="gaussian", delta=1e-6, rows_per_member=3)[0].count - 1
                for _ in range(20_000)]
    assert np.std(gaussian) == pytest.approx(3 * gaussian_sigma(1.0, 1e-6, 1.0), rel=0.05)
    with pytest.raises(DPError, match="whole number"):
        cell_aggregates(["a"], 1.0, rng, rows_per_member=0)


def test_a_cell_outside_the_given_ones_is_counted_not_quoted() -> None:
    with pytest.raises(DPError) as refused:
        cell_aggregates([("secret-85",), ("secret-85",)], 1.0, np.random.default_rng(0), cells=[("20-29",)])
    assert "2 row(s)" in str(refused.value) and "secret" not in str(refused.value)


def test_gaussian_count_and_sum_together_spend_the_stated_delta_not_twice_it(monkeypatch) -> None:
    """Count and sum are two mechanisms on the same rows (sequential composition): their epsilons AND their
    deltas add up. Each drawn at the full delta would make a release stated (epsilon, delta) only
    (epsilon, 2 delta)-DP."""
    import services.anonymizer.dp as dp

    spent: list[tuple[float, float | None]] = []
    real = dp.noise

    def recording(mechanism, epsilon, sensitivity, size, rng, delta=None):  # type: ignore[no-untyped-def]
        spent.append((epsilon, delta))
        return real(mechanism, epsilon, sensitivity, size, rng, delta)

    monkeypatch.setattr(dp, "noise", recording)
    cell_aggregates(["a", "b"], 1.0, np.random.default_rng(0), [1.0, 2.0], (0.0, 10.0), mechanism="gaussian",
                    delta=1e-6)
    assert len(spent) == 2
    assert sum(e for e, _ in spent) == pytest.approx(1.0)
    assert sum(d for _, d in spent if d is not None) <= 1e-6 * (1 + 1e-12)
    spent.clear()
    cell_aggregates(["a", "b"], 1.0, np.random.default_rng(0), mechanism="gaussian", delta=1e-6)
    assert spent == [(1.0, 1e-6)]  # a count alone spends the whole epsilon and delta
