"""What each task trains: parameters, loss and metrics, evaluation sums, end-of-run extras.

A :class:`Task` bundles pure functions over ``(params, batch)``; batches are dicts of arrays
as produced by :mod:`jaxrnn.training.data`::

    imdb         tokens [B, T] int, labels [B] int, lengths [B] int  -> binary classifier
    shakespeare  tokens [B, L + 1] int                               -> next-character LM
    adding       xs [B, T, 2] float, y [B] float                     -> regression of the sum

``loss_fn(params, batch) -> (loss, metrics)`` is what the train step differentiates;
``eval_fn(params, batch) -> sums`` returns per-batch *sums* weighted by ``batch["mask"]`` so
padded evaluation batches count exactly; ``summarize(sums) -> metrics`` turns the totals into
means. The model of a task sees only its small model dataclass from :mod:`jaxrnn.models`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrnn import models
from jaxrnn.training.config import Config


@dataclasses.dataclass(frozen=True)
class Task:
    init: Callable[[Any], Any]  # key -> params
    loss_fn: Callable[[Any, dict], tuple[Any, dict]]  # (params, batch) -> (loss, metrics)
    eval_fn: Callable[[Any, dict], dict]  # (params, batch) -> weighted sums
    summarize: Callable[[dict], dict]  # totals -> metrics
    model_cfg: Any
    # loss_fn takes a third argument, a PRNG key (dropout), fresh at every step
    stochastic: bool = False


def _options(opts: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in opts.items()))


def _mean_metrics(totals: dict) -> dict:
    n = totals["count"]
    return {k.removesuffix("_sum"): v / n for k, v in totals.items() if k.endswith("_sum")}


def imdb_task(cfg: Config) -> Task:
    mcfg = models.ClassifierConfig(
        vocab_size=cfg.data.num_words,
        embed_dim=cfg.model.embed_dim,
        hidden_size=cfg.model.hidden_size,
        cell=cfg.model.cell,
        cell_options=_options(cfg.model.cell_options),
        dropout=cfg.model.dropout,
        recurrent_dropout=cfg.model.recurrent_dropout,
        remat=cfg.model.remat,
        backend=cfg.model.backend,
    )
    use_lengths = cfg.data.padding == "post"  # post-padding: mask the tail via lengths
    stochastic = bool(mcfg.dropout or mcfg.recurrent_dropout)

    def logits(params, batch, key=None):
        lengths = batch["lengths"] if use_lengths else None
        return models.classifier_logits(mcfg, params, batch["tokens"], lengths, key=key)  # [B]

    def loss_fn(params, batch, key=None):
        z = logits(params, batch, key)
        loss = models.binary_cross_entropy(z, batch["labels"])
        acc = jnp.mean((z > 0) == (batch["labels"] == 1))
        return loss, {"loss": loss, "accuracy": acc}

    def eval_fn(params, batch):
        z = logits(params, batch)
        m = batch["mask"]
        bce = optax.sigmoid_binary_cross_entropy(z, batch["labels"].astype(z.dtype))  # [B]
        return {
            "loss_sum": jnp.sum(bce * m),
            "accuracy_sum": jnp.sum(((z > 0) == (batch["labels"] == 1)) * m),
            "count": jnp.sum(m),
        }

    def init(key):
        params = models.init_classifier(key, mcfg)
        if cfg.model.chrono_t_max > 0:
            if mcfg.cell != "lstm":
                raise ValueError(
                    f"model.chrono_t_max applies to the lstm cell only; got cell={mcfg.cell!r}"
                )
            b = models.chrono_lstm_bias(
                jax.random.fold_in(key, 1), params["rnn"].b, cfg.model.chrono_t_max
            )
            params["rnn"] = dataclasses.replace(params["rnn"], b=b)
        return params

    return Task(init, loss_fn, eval_fn, _mean_metrics, mcfg, stochastic)


def shakespeare_task(cfg: Config, vocab_size: int) -> Task:
    mcfg = models.CharLMConfig(
        vocab_size=vocab_size,
        embed_dim=cfg.model.embed_dim,
        hidden_size=cfg.model.hidden_size,
        cell=cfg.model.cell,
        cell_options=_options(cfg.model.cell_options),
        num_layers=cfg.model.num_layers,
        dropout=cfg.model.dropout,
        remat=cfg.model.remat,
        backend=cfg.model.backend,
    )

    def per_char(params, tokens, key=None):
        _, z = models.char_lm_logits(mcfg, params, tokens[:, :-1], key=key)  # [B, L, V]
        ce = optax.softmax_cross_entropy_with_integer_labels(z, tokens[:, 1:])  # [B, L]
        return ce, jnp.argmax(z, -1) == tokens[:, 1:]

    def loss_fn(params, batch, key=None):
        ce, hit = per_char(params, batch["tokens"], key)
        loss = ce.mean()
        return loss, {"loss": loss, "accuracy": hit.mean()}

    def eval_fn(params, batch):
        ce, hit = per_char(params, batch["tokens"])
        m = batch["mask"][:, None]  # [B, 1]
        return {
            "loss_sum": jnp.sum(ce * m),
            "accuracy_sum": jnp.sum(hit * m),
            "count": jnp.sum(m) * ce.shape[1],
        }

    init = functools.partial(models.init_char_lm, cfg=mcfg)
    return Task(init, loss_fn, eval_fn, _mean_metrics, mcfg, stochastic=mcfg.dropout > 0)


def adding_task(cfg: Config) -> Task:
    mcfg = models.RegressorConfig(
        input_size=2,
        hidden_size=cfg.model.hidden_size,
        cell=cfg.model.cell,
        cell_options=_options(cfg.model.cell_options),
        chrono_t_max=cfg.model.chrono_t_max,
        remat=cfg.model.remat,
        backend=cfg.model.backend,
    )

    def loss_fn(params, batch):
        err = models.regressor_predict(mcfg, params, batch["xs"]) - batch["y"]  # [B]
        loss = jnp.mean(err**2)
        return loss, {"loss": loss}

    def eval_fn(params, batch):
        err = models.regressor_predict(mcfg, params, batch["xs"]) - batch["y"]
        return {"loss_sum": jnp.sum(err**2 * batch["mask"]), "count": jnp.sum(batch["mask"])}

    def summarize(totals):
        out = _mean_metrics(totals)
        out["mse"] = out["loss"]
        return out

    return Task(lambda key: models.init_regressor(key, mcfg), loss_fn, eval_fn, summarize, mcfg)


def make_task(cfg: Config, dataset: Any) -> Task:
    if cfg.task == "imdb":
        return imdb_task(cfg)
    if cfg.task == "shakespeare":
        return shakespeare_task(cfg, len(dataset.chars))
    if cfg.task == "adding":
        return adding_task(cfg)
    raise ValueError(f"unknown task {cfg.task!r}")


def sample_text(cfg: Config, task: Task, params: Any, dataset: Any, key: Any) -> str:
    """Shakespeare: ``train.sample_chars`` characters after ``train.sample_prompt``."""
    prompt = dataset.encode(cfg.train.sample_prompt) if cfg.train.sample_prompt else None
    if prompt is None or len(prompt) == 0:
        prompt = dataset.encode("\n")
    params = jax.device_get(params)
    ids = models.char_lm_sample(
        task.model_cfg,
        params,
        jnp.asarray(prompt),
        cfg.train.sample_chars,
        key=key,
        temperature=cfg.train.sample_temperature,
    )
    return dataset.decode(prompt) + dataset.decode(jax.device_get(ids))
