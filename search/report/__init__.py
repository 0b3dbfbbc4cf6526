"""The study report: one self-contained HTML file, a CSV of all trials, and terminal tables.

The report is made of `tables` (pandas: every trial, ablations, the summary's numbers,
presets against the search), `figures` (Optuna's plots, a few drawn by hand), `predictions`
(the best model on the val images, through `search/training/metrics.py`) and `page` (the HTML). `build`
puts them together as a list of sections, each with a stable element id (`SECTION_IDS`);
`summary` prints the terminal summary at the end of a run from the same tables.

The package also holds `dashboard` (the optuna-dashboard launcher). What leaves the search
(export, ensembles, the model cards, evaluate and predict) is `agesearch.search.export`.
"""

from agesearch.search.report.build import SECTION_IDS, ReportResult, build_report, write_csv, write_report
from agesearch.search.report.tables import ablation_tables, summary_facts, terminal_tables, trials_table

__all__ = ["SECTION_IDS", "ReportResult", "ablation_tables", "build_report", "summary_facts", "terminal_tables", "trials_table", "write_csv", "write_report"]
