"""What runs many trainings and says what they show.

    runner.py       train one run or reuse it if its folder holds it finished (resume an unfinished one)
    parallel.py     runs (or any task) in worker processes or on a Ray cluster
    stats.py        paired and Welch tests, Holm, alpha spending (pure Python and scipy: no torch)
    tables.py       result tables as Markdown and on the console (no torch)
    experiments.py  named comparisons over seeds -> results.json, results.md, report.html
    scaling.py      grids of sizes x budgets and their scaling-law fit (scaling_fit.py, no torch)

Knowledge experiments (`kind = "knowledge"`) live in vslm.knowledge.experiment and run their trainings
through runner.py (reader arms through vslm.knowledge.reader) and their seeds through parallel.py;
`vslm experiment` (vslm.commands.experiment) picks one or the other by the spec's kind.
"""
