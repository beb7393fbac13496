"""Sigma compatibility: load SigmaHQ rules unchanged, map fields to canonical columns, compile to Polars."""

from finsecure.detection.sigma.convert import (
    LOGSOURCE_DOMAINS,
    PIPELINE_PATH,
    SigmaUnsupported,
    compile_sigma,
    load_pipeline,
    sigma_rule_from_path,
)
from finsecure.detection.sigma.report import SigmaReportRow, sigma_report

__all__ = [
    "LOGSOURCE_DOMAINS",
    "PIPELINE_PATH",
    "SigmaReportRow",
    "SigmaUnsupported",
    "compile_sigma",
    "load_pipeline",
    "sigma_report",
    "sigma_rule_from_path",
]
