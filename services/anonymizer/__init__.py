"""The anonymizer's engine: pure functions from a table and a dataset definition to a published version.

Public API (what the service calls)::

    definition = load_resolved("datasets/adult-census.yaml")        # DefinitionError lists all problems
    version = anonymize(columns, definition, mode="global")          # or "multidimensional"
    version.columns, version.source_rows, version.report             # report: k, l, t, suppressed, loss...
    cells = cell_aggregates_of(columns, version, definition, np.random.default_rng())

``anonymize`` re-checks k/l/t on the published rows itself and raises PrivacyViolation on a shortfall.
"""

from services.anonymizer.anonymize import (
    AnonymizationReport,
    AnonymizedTable,
    anonymize,
    anonymize_table,
    cell_aggregates_of,
)
from services.anonymizer.definition import (
    DatasetDefinition,
    DefinitionError,
    ResolvedDefinition,
    load_definition,
    load_resolved,
    parse_definition,
    resolve,
)
from services.anonymizer.dp import CellAggregate, DPError, cell_aggregates
from services.anonymizer.hierarchy import Hierarchy, HierarchyError
from services.anonymizer.lattice import NoAnonymousNode
from services.anonymizer.mondrian import MondrianError
from services.anonymizer.privacy_checks import PrivacyViolation, verify_published
from services.anonymizer.privacy_model import PrivacyModel, PrivacyModelError

__all__ = [
    "AnonymizationReport",
    "AnonymizedTable",
    "CellAggregate",
    "DPError",
    "DatasetDefinition",
    "DefinitionError",
    "Hierarchy",
    "HierarchyError",
    "MondrianError",
    "NoAnonymousNode",
    "PrivacyModel",
    "PrivacyModelError",
    "PrivacyViolation",
    "ResolvedDefinition",
    "anonymize",
    "anonymize_table",
    "cell_aggregates",
    "cell_aggregates_of",
    "load_definition",
    "load_resolved",
    "parse_definition",
    "resolve",
    "verify_published",
]
