"""``fedge compare``: one task trained centralized, data-parallel and federated, under the
same budget, on the same data and test set, with bytes counted as the runs go, and one
report (:mod:`fedge.compare.report`).

Modules: :mod:`~fedge.compare.config` (the comparison file), :mod:`~fedge.compare.runner`
(arms to output folders, resuming), :mod:`~fedge.compare.report` (Markdown and HTML from
the arms' files), :mod:`~fedge.compare.progress` (rich progress).
"""

from fedge.compare.config import CompareConfig, load_compare_config, parse_compare_config
from fedge.compare.report import build_report, write_report
from fedge.compare.runner import run_comparison

__all__ = [
    "CompareConfig",
    "build_report",
    "load_compare_config",
    "parse_compare_config",
    "run_comparison",
    "write_report",
]
