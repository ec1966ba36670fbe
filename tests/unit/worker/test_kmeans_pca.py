"""k-means matches scikit-learn's KMeans from the same initial centers; PCA matches sklearn's PCA."""

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from services.worker.analytics import run_analysis
from services.worker.analytics.kmeans import kmeans_plusplus, lloyd, with_ones

INERTIA_RTOL = 1e-5  # float32 distances, as scikit-learn uses for float32 data


def _blobs(n: int, p: int, k: int, seed: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, p)) * 3.0
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, p)) * spread).astype(np.float32)


def _table(x: np.ndarray) -> pa.Table:
    return pa.table({f"x{i}": x[:, i] for i in range(x.shape[1])})


@pytest.mark.parametrize(("n", "p", "k", "spread"),
                         [(5000, 4, 5, 1.0), (20_000, 16, 8, 2.5), (3000, 2, 1, 1.0)])
def test_kmeans_from_the_same_init_matches_sklearn(n: int, p: int, k: int, spread: float) -> None:
    x = _blobs(n, p, k, seed=n + k, spread=spread)
    init = x[np.random.default_rng(1).choice(n, k, replace=False)].astype(np.float64)
    params = {"columns": [f"x{i}" for i in range(p)], "k": k, "init": init.tolist(), "max_iter": 300}
    result = run_analysis("kmeans", params, _table(x)).result
    reference = KMeans(k, init=init.astype(np.float32), n_init=1, max_iter=300, tol=1e-4,
                       algorithm="lloyd").fit(x)
    assert result["inertia"] == pytest.approx(reference.inertia_, rel=INERTIA_RTOL)
    assert np.array(result["centers"]) == pytest.approx(reference.cluster_centers_, rel=1e-4, abs=1e-4)
    assert result["sizes"] == np.bincount(reference.labels_, minlength=k).tolist()
    assert result["converged"]


def test_kmeans_plusplus_seeding_is_as_good_as_sklearns() -> None:
    x = _blobs(10_000, 6, 6, seed=5, spread=0.8)
    ours = [run_analysis("kmeans", {"columns": [f"x{i}" for i in range(6)], "k": 6, "seed": s},
                         _table(x)).result["inertia"] for s in range(3)]
    theirs = [KMeans(6, n_init=1, random_state=s).fit(x).inertia_ for s in range(3)]
    assert min(ours) <= min(theirs) * 1.01


def test_kmeans_is_deterministic_for_a_seed_and_reports_progress() -> None:
    x = _blobs(4000, 3, 4, seed=2)
    progress: list[float] = []
    params = {"columns": ["x0", "x1", "x2"], "k": 4, "seed": 9}
    first = run_analysis("kmeans", params, _table(x), progress.append)
    second = run_analysis("kmeans", params, _table(x))
    assert first.result == second.result
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 2
    assert first.plot_png is not None and first.plot_png.startswith(b"\x89PNG")
    json.dumps(first.result, allow_nan=False)


def test_an_empty_cluster_is_moved_to_the_farthest_point() -> None:
    x = np.array([[0.0], [0.1], [10.0], [10.1]], dtype=np.float32)
    init = np.array([[0.0], [5.0], [100.0]])
    centers, _, inertia, _, _ = lloyd(np, with_ones(np, x), init, 10, 0.0, lambda f: None)
    assert sorted(np.round(centers[:, 0], 3).tolist()) in ([0.0, 0.1, 10.05], [0.05, 10.0, 10.1])
    assert inertia == pytest.approx(0.005, rel=1e-3)


def test_kmeans_plusplus_picks_distinct_rows() -> None:
    x = _blobs(2000, 3, 8, seed=4)
    centers = kmeans_plusplus(np, x, (x * x).sum(axis=1), 8, np.random.default_rng(0))
    assert len({tuple(c) for c in centers.tolist()}) == 8


def test_kmeans_drops_incomplete_rows() -> None:
    table = pa.table({"u": pa.array([0.0, 0.1, None, 10.0, 10.2]), "v": [0.0, 0.0, 1.0, 1.0, 1.0]})
    result = run_analysis("kmeans", {"columns": ["u", "v"], "k": 2}, table, min_group_size=1).result
    assert result["rows_used"] == 4 and result["rows_dropped"] == 1 and sorted(result["sizes"]) == [2, 2]


@pytest.mark.parametrize("n_components", [None, 2])
def test_pca_matches_sklearn_up_to_sign(mixed_table: pa.Table, n_components: int | None) -> None:
    columns = ["a", "b", "c", "flag"]
    outcome = run_analysis("pca", {"columns": columns, "n_components": n_components}, mixed_table)
    x = mixed_table.select(columns).to_pandas().dropna().to_numpy(float)
    reference = PCA(n_components=n_components, svd_solver="full").fit(x)
    result = outcome.result
    assert result["explained_variance"] == pytest.approx(reference.explained_variance_, rel=1e-9)
    assert result["explained_variance_ratio"] == pytest.approx(reference.explained_variance_ratio_, rel=1e-9)
    ours = np.array(result["components"])
    signs = np.sign((ours * reference.components_).sum(axis=1))
    assert ours * signs[:, None] == pytest.approx(reference.components_, abs=1e-8)
    assert result["mean"] == pytest.approx(reference.mean_, rel=1e-12)
    assert outcome.plot_png is not None and outcome.plot_png.startswith(b"\x89PNG")


def test_standardized_pca_is_pca_of_z_scores(mixed_table: pa.Table) -> None:
    columns = ["a", "b", "c"]
    result = run_analysis("pca", {"columns": columns, "standardize": True}, mixed_table).result
    x = mixed_table.select(columns).to_pandas().dropna().to_numpy(float)
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    reference = PCA(svd_solver="full").fit(z)
    assert result["explained_variance"] == pytest.approx(reference.explained_variance_, rel=1e-9)
    assert sum(result["explained_variance"]) == pytest.approx(3.0, rel=1e-12)


def test_a_tie_goes_to_the_lower_center() -> None:
    x = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    init = np.array([[0.0], [2.0]])
    centers, labels, inertia, _, _ = lloyd(np, with_ones(np, x), init, 1, 0.0, lambda f: None)
    assert centers[:, 0].tolist() == [0.5, 3.0] and labels.tolist() == [0, 0, 1] and inertia == 0.5


def test_kmeans_on_tied_integer_data_matches_sklearn() -> None:
    rng = np.random.default_rng(11)
    x = rng.integers(0, 4, size=(3000, 2)).astype(np.float32)
    init = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    _, labels, inertia, _, converged = lloyd(np, with_ones(np, x), init, 100, 0.0, lambda f: None)
    reference = KMeans(4, init=init.astype(np.float32), n_init=1, max_iter=100, tol=0.0,
                       algorithm="lloyd").fit(x)
    assert converged and inertia == pytest.approx(reference.inertia_, rel=INERTIA_RTOL)
    assert np.bincount(labels, minlength=4).tolist() == np.bincount(reference.labels_, minlength=4).tolist()
