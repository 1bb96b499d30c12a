"""The study that reproduces the paper: ``python -m regnp.study``.

- ``protocols.py``: which jobs answer which question (settings, models, λ, seeds);
- ``grid.py``: a job is a pure function of a small config that writes its own folder; executors;
- ``experiments.py``: the command line over the two;
- ``report.py``: tables, statistics and figures from the finished jobs' JSON alone.
"""
