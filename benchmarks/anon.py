"""Anonymization engine on UCI Adult (k=5, 9 quasi-identifiers, ARX hierarchies), as ARX benchmarks it.

For each suppression limit s in 0, 1, 5, 100 %: the optimal global search (time, utility = 1 - ARX Loss),
the exhaustive search over all 12,960 nodes (the baseline, same run), and the multidimensional
(Mondrian) mode's utility. Times are for the search on the encoded table (as ARX reports its search
time), best of 5 runs: wall and, as ``*_cpu_seconds``, process CPU time (robust to a busy machine).
``*_end_to_end_seconds`` adds encoding, labelling, metrics and the final check of the published rows.

``build_version_*``: a dataset version of 1,000,000 generated records end to end in process (the
anonymizer service's build pipeline without HTTP: vault crypto to open the records, pseudonyms,
the per-member bound, the engine, Parquet, DP aggregates into DuckDB); goal >= 100,000 rows/s. Its
members have 5 records each and the definition lets each keep 5 (``max_rows_per_member``), so every
record goes through and k=5 counts members (classes of >= 25 rows).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from typing import TypeVar

from services.anonymizer.anonymize import anonymize_table
from services.anonymizer.definition import shared_dir
from services.anonymizer.encoding import encode
from services.anonymizer.hierarchy import from_csv
from services.anonymizer.lattice import GlobalRecoding, exhaustive_search, optimal_search
from services.anonymizer.privacy_model import PrivacyModel

LIMITS_PERCENT = (0, 1, 5, 100)
T = TypeVar("T")


def _best_of(runs: int, fn: Callable[[], T]) -> tuple[float, float, T]:
    """Least wall and least CPU seconds over ``runs`` calls (CPU time is robust to a busy machine)."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu, result


def run() -> dict[str, float | int]:
    adult = shared_dir() / "data" / "adult"
    with (adult / "adult.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))
    columns = {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}
    hierarchies = {c: from_csv(c, adult / f"adult_hierarchy_{c}.csv") for c in columns}
    table = encode(columns, hierarchies)
    figures: dict[str, float | int] = {"rows": table.n_rows, "quasi_identifiers": len(hierarchies)}
    for s in LIMITS_PERCENT:
        model = PrivacyModel(k=5, suppression_limit=s / 100)
        seconds, cpu_seconds, found = _best_of(5, lambda m=model: optimal_search(GlobalRecoding(table, m)))
        ex_seconds, _, full = _best_of(1, lambda m=model: exhaustive_search(GlobalRecoding(table, m)))
        e2e_seconds, _, published = _best_of(1, lambda m=model: anonymize_table(columns, hierarchies, m))
        multi = anonymize_table(columns, hierarchies, model, mode="multidimensional")
        figures |= {
            f"global_s{s}_seconds": round(seconds, 4),
            f"global_s{s}_cpu_seconds": round(cpu_seconds, 4),
            f"global_s{s}_utility": round(1 - found.best.loss, 6),
            f"global_s{s}_nodes_checked": found.nodes_checked,
            f"global_s{s}_rows_suppressed": found.best.suppressed_rows,
            f"global_s{s}_end_to_end_seconds": round(e2e_seconds, 4),
            f"exhaustive_s{s}_seconds": round(ex_seconds, 3),
            f"exhaustive_s{s}_utility": round(1 - full.best.loss, 6),
            f"multi_s{s}_utility": round(multi.report.utility, 6),
            f"global_equals_exhaustive_s{s}": int(found.best.node == full.best.node
                                                   and abs(found.best.loss - full.best.loss) < 1e-12),
        }
        if abs(published.report.utility - (1 - found.best.loss)) > 1e-9:
            raise AssertionError(f"s={s}%: published utility {published.report.utility} differs from the search's")
    figures |= build_version_figures()
    return figures


BUILD_RECORDS = 1_000_000
BUILD_RECORDS_PER_MEMBER = 5


def _sealed_members(n_records: int) -> list[tuple[str, bytes, list[tuple[str, str, str]]]]:
    """Generated members, each with records sampled from Adult, sealed as the vault seals them."""
    import json

    import numpy as np

    from services.vault.crypto import new_data_key, seal_many

    with (shared_dir() / "data" / "adult" / "adult.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    plain = [dumps({**r, "age": int(r["age"])}).encode() for r in rows]
    pick = np.random.default_rng(1).integers(0, len(plain), n_records)
    out = []
    for m in range(n_records // BUILD_RECORDS_PER_MEMBER):
        member, key = f"0x{m:040x}", new_data_key()
        base = m * BUILD_RECORDS_PER_MEMBER
        items = [(f"u{m}-{j:06d}", plain[pick[base + j]]) for j in range(BUILD_RECORDS_PER_MEMBER)]
        out.append((member, key, seal_many(key, member, items)))
    return out


def build_version_figures(n_records: int = BUILD_RECORDS) -> dict[str, float | int]:
    """A dataset version of `n_records` generated records end to end, in process (no HTTP, no Kafka):
    open every record with the vault's crypto (AES-256-GCM per member key), parse, pseudonymize (HMAC),
    anonymize (global optimum, k=5 members at <= 5 rows each, distinct 2-diversity on salary-class, 8 QIs),
    write Parquet and the
    DP aggregates into DuckDB. Sealing the records (the vault's side) is set-up, not timed; the pipeline
    runs twice on the same records and the least wall and CPU seconds count (as the searches above)."""
    import binascii
    import tempfile
    from pathlib import Path

    import numpy as np
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from services.anonymizer import build
    from services.anonymizer.definition import parse_definition, resolve

    qis = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
    definition = resolve(parse_definition({
        "name": "bench-census", "version": 1, "purpose": "public-statistics", "data_categories": ["demographics"],
        "columns": {c: {"type": "integer", "min": 17, "max": 90} if c == "age" else {"type": "categorical"}
                    for c in [*qis, "salary-class"]},
        "quasi_identifiers": {c: {"csv": f"data/adult/adult_hierarchy_{c}.csv"} for c in qis},
        "sensitive": ["salary-class"],
        "privacy": {"k": 5, "l": 2, "suppression_limit": 0.01, "max_rows_per_member": BUILD_RECORDS_PER_MEMBER},
        "aggregates": {"epsilon": 1.0, "value_column": "age", "value_bounds": [17, 90]}}))
    sealed = _sealed_members(n_records)
    b64 = binascii.a2b_base64
    key = build.dataset_key(b"bench-secret", "bench-census")

    def once() -> tuple[float, build.BuiltVersion]:
        started = time.perf_counter()
        plaintexts: list[bytes] = []
        members: list[str] = []
        record_ids: list[str] = []
        for member, data_key, items in sealed:
            decrypt, prefix = AESGCM(data_key).decrypt, f"{member}|".encode()
            for record_id, nonce, ciphertext in items:
                plaintexts.append(decrypt(b64(nonce), b64(ciphertext), prefix + record_id.encode()))
                members.append(member)
                record_ids.append(record_id)
        decrypt_seconds = time.perf_counter() - started
        table = build.table_from_plaintexts(plaintexts, members, record_ids, definition)
        built = build.build_version(table, definition, key, np.random.default_rng(2))
        with tempfile.TemporaryDirectory() as tmp:
            build.write_parquet(Path(tmp), "bench-census", 1, built.parquet)
            build.write_aggregates(Path(tmp) / "aggregates.duckdb", "bench-census", 1, built, definition)
        return decrypt_seconds, built

    seconds, cpu_seconds, (decrypt_seconds, built) = _best_of(2, once)
    return {"build_version_records": n_records, "build_version_seconds": round(seconds, 3),
            "build_version_cpu_seconds": round(cpu_seconds, 3),
            "build_version_decrypt_seconds": round(decrypt_seconds, 3),
            "build_version_rows_published": built.report.rows_published,
            "build_version_rows_suppressed": built.report.rows_suppressed,
            "build_version_rows_over_member_bound": built.rows_over_member_bound,
            "build_version_achieved_k_members": built.achieved_k,
            "build_version_utility": round(built.report.utility, 6),
            "build_version_rows_per_s": round(n_records / seconds),
            "build_version_rows_per_cpu_s": round(n_records / cpu_seconds)}
