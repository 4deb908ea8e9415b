"""trawl's benchmarks: ``make bench`` (``python -m bench``). Figures are ratios against baselines measured in the
same run, on real servers started for the run."""
