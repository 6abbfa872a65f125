"""Optuna tuning: the heuristics' thresholds and the agents' hyperparameters.

* :mod:`.spaces` -- what each trial samples, and the defaults as trial 0;
* :mod:`.objectives` -- what a trial is scored on (noise-aware, several
  seeds on the same episodes) and the objectives Optuna calls;
* :mod:`.storage` -- resumable, shareable studies (SQLite or any RDB),
  samplers and pruners;
* :mod:`.outputs` -- trials.csv, plots, the best parameters, the report.

The command line is ``scripts/tune.py`` (:mod:`ptreclaim.cli.tune`).
"""
