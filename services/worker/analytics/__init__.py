"""Vetted analytics over a dataset version, one implementation for NumPy (CPU) and CuPy (GPU).

Entry point: `run_analysis(name, params, table, progress) -> AnalysisOutcome`; see docs/analytics.md.
"""

from services.worker.analytics.backend import HardwareInfo, detect_hardware, gpu_available, select_xp
from services.worker.analytics.catalog import CATALOG, run_analysis, schema_of, validate_job
from services.worker.analytics.outcome import AnalysisOutcome, Progress
from services.worker.analytics.validation import AnalysisFailed, JobRefused

__all__ = ["CATALOG", "AnalysisFailed", "AnalysisOutcome", "HardwareInfo", "JobRefused", "Progress",
           "detect_hardware", "gpu_available", "run_analysis", "schema_of", "select_xp", "validate_job"]
