"""Training: configs, data sets, the jitted train step, checkpoints, metrics and the CLI.

::

    python train.py --config configs/imdb_simple_rnn.yaml [--set key=value ...] [--resume]

Modules:
    config: the typed config schema, YAML loading, ``--set`` overrides, validation.
    data: IMDB (tar.gz or directory), tiny-shakespeare, the adding problem; deterministic batches.
    tasks: model + loss + metrics for each task.
    optim: optax optimizer and learning-rate schedule from the config.
    fixtures: small generated data in the real formats (tests, notebook).
    checkpoint: orbax checkpoints (finite states only), resume, the run-directory lock.
    runs: a trained run read back (config, task, parameters).
    loop: ``train_step``, evaluation, data parallelism, the training loop.
    cli: the command line; usage: its generated help (configs, keys).
"""
