from __future__ import annotations

import pytest

from services.anonymizer.privacy_checks import PrivacyViolation, verify_published
from services.anonymizer.privacy_model import PrivacyModel, PrivacyModelError


def test_a_class_smaller_than_k_is_refused() -> None:
    with pytest.raises(PrivacyViolation, match="1 of 2 equivalence class"):
        verify_published({"age": ["20-29"] * 3 + ["30-39"] * 2}, {}, PrivacyModel(k=3))


def test_a_class_without_l_distinct_sensitive_values_is_refused() -> None:
    qi = {"age": ["20-29"] * 4}
    verify_published(qi, {"disease": ["flu", "flu", "cold", "hiv"]}, PrivacyModel(k=2, l=3))
    with pytest.raises(PrivacyViolation):
        verify_published(qi, {"disease": ["flu", "flu", "flu", "hiv"]}, PrivacyModel(k=2, l=3))


def test_entropy_l_diversity_is_stricter_than_distinct() -> None:
    qi = {"age": ["20-29"] * 10}
    skewed = {"disease": ["flu"] * 8 + ["cold", "hiv"]}
    verify_published(qi, skewed, PrivacyModel(k=2, l=3))
    with pytest.raises(PrivacyViolation):
        verify_published(qi, skewed, PrivacyModel(k=2, l=3, l_kind="entropy"))


def test_t_closeness_compares_with_the_input_distribution() -> None:
    qi = {"age": ["a"] * 4}
    sens = {"s": ["x", "x", "x", "y"]}
    verify_published(qi, sens, PrivacyModel(k=2, t=0.3), {"s": {"x": 0.5, "y": 0.5}})
    with pytest.raises(PrivacyViolation):
        verify_published(qi, sens, PrivacyModel(k=2, t=0.2), {"s": {"x": 0.5, "y": 0.5}})


def test_an_empty_output_discloses_nothing() -> None:
    verify_published({"age": []}, {}, PrivacyModel(k=5))


def test_k_below_two_is_refused() -> None:
    with pytest.raises(PrivacyModelError, match="k >= 2"):
        PrivacyModel(k=1)
