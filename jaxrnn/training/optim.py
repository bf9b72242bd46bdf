"""The optax optimizer and learning-rate schedule described by an ``optim`` config.

::

    lr(step) = warm-up (linear 0 -> learning_rate over warmup_steps), then
               constant | cosine (to learning_rate * end_factor at the last step) |
               step (times step_factor every step_every steps)
    tx = chain(clip_by_global_norm(clip_norm)?, adam | adamw | rmsprop | sgd (lr(step)))

Examples:
    >>> from jaxrnn.training.config import OptimConfig
    >>> sched = make_schedule(OptimConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10),
    ...                       total_steps=110)
    >>> [round(float(sched(s)), 3) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import optax

from jaxrnn.training.config import OptimConfig


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step, per ``cfg``."""
    lr, warm = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warm, 1), alpha=cfg.end_factor)
    elif cfg.schedule == "step":
        main = optax.exponential_decay(lr, cfg.step_every, cfg.step_factor, staircase=True)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """``clip_by_global_norm`` (when ``clip_norm`` is set) chained with the named optimizer."""
    lr = make_schedule(cfg, total_steps)
    if cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "rmsprop":
        opt = optax.rmsprop(lr, decay=0.9, eps=cfg.eps, momentum=cfg.momentum or None)
    elif cfg.name == "sgd":
        opt = optax.sgd(lr, momentum=cfg.momentum or None)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
