"""What the project's bootstrap intervals share: the fewest clusters they are given on.

Both resample whole clusters: the automatic metrics' intervals the evaluation dialogues
(evaluation/bootstrap.py), the human evaluation's the raters (human_eval/report.py).
Drawn from a few clusters, a 95% percentile interval of a mean covers far less than asked:
it held the true value 50% of the time on 2 clusters (3 distinct resamples: the interval
spans the two clusters' values), 81% on 4, 89% on 10, 93% on 20 (2,000 simulated normal
cases each). Fewer clusters than this give no interval.
"""

MIN_CLUSTERS = 10
