"""Training SB3 agents on the page-table reclaim env.

* :mod:`.config` -- the experiment (what to train, on what, how long, how
  to judge it) and its ``--set`` overrides;
* :mod:`.hyperparams` -- an algorithm's hyperparameters from its algo YAML;
* :mod:`.vecenv` -- the training VecEnv and the per-algorithm wrappers;
* :mod:`.callbacks` -- validation, best model, checkpoints, stop requests;
* :mod:`.loop` -- one run: train or resume, then the final evaluation;
* :mod:`.baselines` -- the cached baselines of the final evaluation;
* :mod:`.runconfig` -- a run's resolved ``config.yaml``, written and read back;
* :mod:`.report` -- a run's report and plots, and the multi-seed aggregate;
* :mod:`.multi` -- several seeds, in turn or in worker processes.

The command line is :mod:`ptreclaim.cli.train`; models are loaded by
:mod:`ptreclaim.agents.loading` only.
"""
