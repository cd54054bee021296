"""The task suite of issue 22: does GRAFT help on data nobody tuned it on?

``python benchmarks/suite/run.py`` runs every task of :mod:`suite.tasks` (data
generated or shipped with a package, no download) with the sampler's defaults,
uniform subsets of the same sizes, budget-matched full data, RS2 and InfoBatch, at
fractions 0.1 and 0.3 over 5 seeds, plus the estimator's static use; it writes a
win/tie/loss table and a figure. ``--quick`` is the few-minute version.

Modules: :mod:`suite.tasks` (data and models of each task), :mod:`suite.training`
(one training run, the strategies' samplers, the static use), :mod:`suite.stats`
(paired differences with t-intervals, the table, the figure) and :mod:`suite.run`
(the command line and the incremental result files).
"""
