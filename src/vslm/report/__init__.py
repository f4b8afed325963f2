"""Reports: HTML pages drawn from a run folder's files (metrics, probes, config, samples).

A leaf: it reads files and imports no torch and no model, so a report can be redrawn from any run
folder, on any machine, without a model in memory.

    from vslm.report import write_report, compare_runs
    write_report("runs/demo")                      # -> runs/demo/report.html
    compare_runs(["runs/a", "runs/b"], "runs/compare.html")
"""

from vslm.report.compare import compare_runs
from vslm.report.run_report import write_report

__all__ = ["compare_runs", "write_report"]
