"""What runs many trainings and says what they show.

    runner.py       train one run or reuse it if its folder holds it finished (resume an unfinished one)
    stats.py        mean and spread over seeds, Welch's t-test (pure Python and scipy: no torch)
    tables.py       result tables as Markdown and on the console (no torch)
    experiments.py  named comparisons over seeds -> results.json, results.md, report.html

Knowledge experiments (`kind = "knowledge"`) live in vslm.knowledge.experiment and run their trainings
through runner.py; `vslm experiment` (vslm.commands.experiment) picks one or the other by the spec's kind.
"""
