"""Training configuration: a typed schema, loaded from YAML and validated on load.

A config file has a top-level ``task`` (``imdb``, ``shakespeare`` or ``adding``) that picks
the schema of its ``data`` and ``model`` sections; ``optim`` and ``train`` are shared::

    task: imdb            # which data set / model family
    seed: 0
    data:  {...}          # ImdbData | ShakespeareData | AddingData
    model: {...}          # ImdbModel | ShakespeareModel | AddingModel
    optim: {...}          # OptimConfig
    train: {...}          # TrainConfig

:func:`load_config` reads a file and applies ``--set section.key=value`` overrides (values
are parsed as YAML, so ``--set optim.learning_rate=3e-4`` and ``--set data.path=null`` work).
An unknown key, a value of the wrong type or a missing value is a :class:`ConfigError`
that names the key and the file (or the ``--set`` it came from).

Examples:
    >>> cfg = from_dict({"task": "adding", "train": {"steps": 10}}, source="<doc>")
    >>> cfg.data.T, cfg.model.cell, cfg.train.steps
    (200, 'simple', 10)
    >>> from_dict({"task": "adding", "train": {"stepz": 10}}, source="x.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxrnn.training.config.ConfigError: x.yaml: unknown key 'train.stepz'; expected one of [...]
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


# --- data sections ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImdbData:
    path: str | None = None  # .tar.gz or directory in the aclImdb/{train,test}/{pos,neg} layout
    num_words: int = 5000  # vocabulary incl. 0 = padding and 1 = unknown
    maxlen: int = 250  # tokens kept per review
    padding: str = "pre"  # "pre" (Keras) or "post" (+ lengths masking)
    truncating: str = "pre"  # "pre": keep the last maxlen words (Keras); "post": the first
    cache_dir: str = "~/.cache/jaxrnn"  # tokenized .npz and downloads
    limit: int = 0  # > 0: use only this many reviews per split (quick runs, notebook)


@dataclasses.dataclass(frozen=True)
class ShakespeareData:
    path: str | None = None  # a plain-text corpus (tiny-shakespeare input.txt)
    seq_len: int = 128  # characters per training sequence (truncated BPTT length)
    val_fraction: float = 0.1  # last 10% of the text is the validation split


@dataclasses.dataclass(frozen=True)
class AddingData:
    T: int = 200  # sequence length
    test_size: int = 2000  # fixed test set drawn from a seed apart from training
    test_seed: int = 12345  # seed of the test set


# --- model sections --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImdbModel:
    embed_dim: int = 32  # E
    hidden_size: int = 100  # H
    cell: str = "simple"  # registered cell name
    # keyword arguments of cells.<cell>.init
    cell_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    chrono_t_max: int = 0  # lstm: chrono bias init (Tallec & Ollivier 2018); 0 = off
    dropout: float = 0.0  # Keras's dropout on x_t (one mask per sequence), training only
    recurrent_dropout: float = 0.0  # Keras's recurrent_dropout on h_{t-1}, training only
    # what runs the recurrence: auto (the fastest that applies) | scan | xla | native | pallas
    # | linear (the linear cells' associative scan); the same numbers on each (jaxrnn.backends)
    backend: str = "auto"
    # rematerialise BPTT (jaxrnn.rnn's remat): k steps per checkpointed segment, "sqrt", or
    # null (off). Same numbers, O(T / k + k) states kept instead of O(T), ~1 more forward pass
    remat: int | str | None = None


@dataclasses.dataclass(frozen=True)
class ShakespeareModel:
    embed_dim: int = 64
    hidden_size: int = 512
    cell: str = "gru"
    cell_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_layers: int = 1  # stacked layers of hidden_size units (jaxrnn.stack)
    # char-rnn's dropout: between layers and on the top layer's outputs, training only
    dropout: float = 0.0
    backend: str = "auto"  # what runs the recurrence (see ImdbModel.backend)
    # rematerialised BPTT (see ImdbModel.remat); a stack runs its segments through all layers
    remat: int | str | None = None


@dataclasses.dataclass(frozen=True)
class AddingModel:
    hidden_size: int = 100
    cell: str = "simple"
    cell_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    chrono_t_max: int = 0  # lstm: chrono bias init (Tallec & Ollivier 2018); 0 = off
    backend: str = "auto"  # what runs the recurrence (see ImdbModel.backend)
    remat: int | str | None = None  # rematerialised BPTT (see ImdbModel.remat)


# --- shared sections -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | adamw | rmsprop | sgd
    learning_rate: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # adamw only (decoupled)
    momentum: float = 0.0  # sgd / rmsprop
    b1: float = 0.9  # adam / adamw
    b2: float = 0.999  # adam / adamw
    eps: float = 1e-7  # Keras's epsilon
    clip_norm: float | None = None  # clip gradients by global norm (None: no clipping)
    schedule: str = "constant"  # constant | cosine | step
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    end_factor: float = 0.0  # cosine: final lr = learning_rate * end_factor
    step_every: int = 1000  # step: multiply by step_factor every step_every steps
    step_factor: float = 0.5


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128  # global batch (split over devices)
    steps: int | None = None  # total steps; or give epochs
    epochs: float | None = None  # total epochs (steps = epochs * steps_per_epoch)
    eval_every: int = 0  # steps between evaluations (0: once per epoch)
    eval_batch_size: int = 500
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 50  # steps between JSONL train records
    run_dir: str | None = None  # default: runs/<config name>
    progress: bool = True  # tqdm progress bar
    sample_chars: int = 0  # shakespeare: characters to sample at the end
    sample_temperature: float = 0.8
    sample_prompt: str = "ROMEO:"


@dataclasses.dataclass(frozen=True)
class DiagnosticsConfig:
    every: int = 0  # steps between ||dL/ds_t||-over-t records (grad_flow.png); 0 = off


TASK_SECTIONS: dict[str, tuple[type, type]] = {
    "imdb": (ImdbData, ImdbModel),
    "shakespeare": (ShakespeareData, ShakespeareModel),
    "adding": (AddingData, AddingModel),
}


@dataclasses.dataclass(frozen=True)
class Config:
    task: str
    seed: int
    name: str
    data: Any
    model: Any
    optim: OptimConfig
    train: TrainConfig
    # what the config is meant to reach, "METRIC OP VALUE" on the final evaluation, e.g.
    # "test_accuracy >= 0.85": drawn on the curves, checked in summary.json
    target: str | None = None
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TOP_KEYS = ("task", "seed", "name", "data", "model", "optim", "train", "target", "diagnostics")
TARGET_METRICS = {
    "imdb": ("test_accuracy", "test_loss"),
    "shakespeare": ("test_loss", "test_accuracy"),
    "adding": ("test_mse", "test_loss"),
}
_TARGET_OPS = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed ``target``: ``metric op value`` (e.g. ``test_accuracy >= 0.85``)."""

    metric: str
    op: str
    value: float

    def met(self, metrics: dict[str, float]) -> bool:
        return _TARGET_OPS[self.op](float(metrics[self.metric]), self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_target(text: str, task: str, where: str = "target") -> Target:
    """``"test_accuracy >= 0.85"`` -> :class:`Target`; raises :class:`ConfigError` naming the
    expected form and the metrics ``task`` reports."""
    parts = str(text).split()
    metrics = TARGET_METRICS[task]
    ok = len(parts) == 3 and parts[0] in metrics and parts[1] in _TARGET_OPS
    try:
        value = float(parts[2]) if ok else math.nan
    except ValueError:
        value, ok = math.nan, False
    if not ok or not math.isfinite(value):
        raise ConfigError(
            f"{where}: 'target' must be 'METRIC OP VALUE' with METRIC one of {list(metrics)} "
            f"(task {task}) and OP one of {list(_TARGET_OPS)}; got {text!r}"
        )
    return Target(parts[0], parts[1], value)


# --- validation ------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_value(value: Any, tp: Any, key: str, where: str) -> Any:
    """Returns ``value`` converted to ``tp`` (int -> float only) or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        if value is None:
            raise ConfigError(f"{where}: missing value for {key!r} (expected {_type_name(tp)})")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check_value(value, opt, key, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if value is None:
        raise ConfigError(f"{where}: missing value for {key!r} (expected {_type_name(tp)})")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(
                f"{where}: {key!r} must be a mapping of names to values; got {value!r}"
            )
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"unsupported schema type {tp!r} for {key}")
    if not ok:
        raise ConfigError(
            f"{where}: {key!r} must be {_type_name(tp)}; got {value!r} ({type(value).__name__})"
        )
    return value


# Keys that older configs had, with what replaced them.
REPLACED_KEYS = {
    "model.fast": "'model.backend' (default auto: the fastest path is chosen by itself, with the "
    "same numbers); delete the line, or set model.backend to scan | xla | native | pallas",
}


def _build(cls: type, raw: Any, prefix: str, where: str, origins: dict[str, str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: section {prefix!r} must be a mapping; got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}"
        w = origins.get(key, where)
        if key in REPLACED_KEYS:
            raise ConfigError(f"{w}: {key!r} was replaced: {REPLACED_KEYS[key]}")
        if k not in names:
            raise ConfigError(f"{w}: unknown key {key!r}; expected one of {sorted(names)}")
        kwargs[k] = _check_value(v, hints[k], key, w)
    return cls(**kwargs)


def from_dict(
    raw: Any, *, source: str = "<config>", name: str | None = None, origins: dict | None = None
) -> Config:
    """Validates a nested dict (as read from YAML) into a :class:`Config`.

    Args:
        raw: ``{"task": ..., "data": {...}, ...}``.
        source: file name used in error messages.
        name: run name when the dict has none (e.g. the file stem).
        origins: ``{"section.key": "--set section.key=value"}`` for keys set on the command line.

    Raises:
        ConfigError: unknown key, wrong type or missing value, naming the key and the source.
    """
    origins = origins or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections; got {raw!r}")
    for k in raw:
        if k not in TOP_KEYS:
            w = origins.get(str(k), source)
            raise ConfigError(f"{w}: unknown key {k!r}; expected one of {sorted(TOP_KEYS)}")
    if raw.get("task") is None:
        raise ConfigError(
            f"{source}: missing value for 'task' (expected one of {sorted(TASK_SECTIONS)})"
        )
    task = _check_value(raw["task"], str, "task", origins.get("task", source))
    if task not in TASK_SECTIONS:
        raise ConfigError(
            f"{origins.get('task', source)}: 'task' must be one of {sorted(TASK_SECTIONS)}; "
            f"got {task!r}"
        )
    data_cls, model_cls = TASK_SECTIONS[task]
    seed = _check_value(raw.get("seed", 0), int, "seed", origins.get("seed", source))
    run_name = _check_value(raw.get("name", name or task), str, "name", source)
    cfg = Config(
        task=task,
        seed=seed,
        name=run_name,
        data=_build(data_cls, raw.get("data"), "data", source, origins),
        model=_build(model_cls, raw.get("model"), "model", source, origins),
        optim=_build(OptimConfig, raw.get("optim"), "optim", source, origins),
        train=_build(TrainConfig, raw.get("train"), "train", source, origins),
        target=_check_value(raw.get("target"), str | None, "target", source),
        diagnostics=_build(
            DiagnosticsConfig, raw.get("diagnostics"), "diagnostics", source, origins
        ),
    )
    if cfg.target is not None:
        parse_target(cfg.target, task, origins.get("target", source))
    _check_semantics(cfg, source, origins)
    return cfg


def _origin(key: str, where: str, origins: dict[str, str]) -> str:
    """The ``--set`` item that gave ``key`` (or a section above it, or a key inside it), else
    ``where`` (the file)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in origins:
            return origins[".".join(parts[:i])]
    inside = [o for k, o in origins.items() if k.startswith(key + ".")]
    return inside[0] if inside else where


def _cell_option_names(cell: str) -> list[str]:
    """The keyword arguments of ``cells.<cell>.init`` a config may set (all but the ones the
    model passes itself)."""
    import inspect

    from jaxrnn import cells

    params = inspect.signature(cells.get(cell).init).parameters
    own = {"key", "input_size", "hidden_size", "dtype"}
    return sorted(n for n, p in params.items() if n not in own and p.kind is not p.VAR_POSITIONAL)


def _check_semantics(cfg: Config, where: str, origins: dict[str, str] | None = None) -> None:
    origins = origins or {}

    def bad(msg: str, key: str | None = None) -> None:
        raise ConfigError(f"{_origin(key, where, origins) if key else where}: {msg}")

    choices = {
        "optim.name": (cfg.optim.name, ("adam", "adamw", "rmsprop", "sgd")),
        "optim.schedule": (cfg.optim.schedule, ("constant", "cosine", "step")),
    }
    if cfg.task == "imdb":
        choices["data.padding"] = (cfg.data.padding, ("pre", "post"))
        choices["data.truncating"] = (cfg.data.truncating, ("pre", "post"))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            bad(f"{key!r} must be one of {list(allowed)}; got {value!r}", key)
    t = cfg.train
    if (t.steps is None) == (t.epochs is None):
        got = "neither" if t.steps is None else f"both ({t.steps!r} and {t.epochs!r})"
        bad(f"give exactly one of 'train.steps' and 'train.epochs'; got {got}")
    positive = {
        "train.steps": t.steps,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.checkpoint_every": t.checkpoint_every,
        "train.keep_checkpoints": t.keep_checkpoints,
        "train.log_every": t.log_every,
        "optim.learning_rate": cfg.optim.learning_rate,
    }
    for name in ("T", "test_size", "seq_len", "num_words", "maxlen"):  # the task's sizes
        if hasattr(cfg.data, name):
            positive[f"data.{name}"] = getattr(cfg.data, name)
    for key, value in positive.items():
        if value is None:
            continue
        # NaN compares false with everything, so "not > 0" also catches it
        if not (value > 0 and math.isfinite(value)):
            bad(f"{key!r} must be a finite number > 0; got {value!r}", key)
    for key, value in (
        ("train.eval_every", t.eval_every),
        ("optim.warmup_steps", cfg.optim.warmup_steps),
        ("diagnostics.every", cfg.diagnostics.every),
    ):
        if value < 0:
            bad(f"{key!r} must be >= 0; got {value!r}", key)
    for key in ("weight_decay", "momentum", "b1", "b2", "eps", "end_factor", "step_factor"):
        value = getattr(cfg.optim, key)
        if not math.isfinite(value):
            bad(f"'optim.{key}' must be a finite number; got {value!r}", f"optim.{key}")
    clip = cfg.optim.clip_norm
    if clip is not None and not (clip > 0 and math.isfinite(clip)):
        bad(
            f"'optim.clip_norm' must be a finite number > 0 or null; got {clip!r}",
            "optim.clip_norm",
        )
    for name in ("dropout", "recurrent_dropout"):
        rate = getattr(cfg.model, name, 0.0)
        if not 0.0 <= rate < 1.0:
            bad(f"'model.{name}' must be in [0, 1); got {rate!r}", f"model.{name}")
    num_layers = getattr(cfg.model, "num_layers", 1)
    if num_layers < 1:
        bad(f"'model.num_layers' must be >= 1; got {num_layers!r}", "model.num_layers")
    backends = ("auto", "scan", "xla", "native", "pallas", "linear")  # jaxrnn.backends.NAMES
    if cfg.model.backend not in backends:
        bad(
            f"'model.backend' must be one of {list(backends)}; got {cfg.model.backend!r}",
            "model.backend",
        )
    remat = cfg.model.remat
    if not (remat is None or remat == "sqrt" or (isinstance(remat, int) and remat >= 1)):
        bad(f"'model.remat' must be a positive int, 'sqrt' or null; got {remat!r}", "model.remat")
    try:
        allowed = _cell_option_names(cfg.model.cell)
    except ValueError as e:  # an unknown cell name
        bad(f"'model.cell': {e}", "model.cell")
    for name in cfg.model.cell_options:
        if name not in allowed:
            key = f"model.cell_options.{name}"
            bad(
                f"unknown key {key!r} for cell {cfg.model.cell!r}; expected one of {allowed}",
                key,
            )


def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``["optim.learning_rate=3e-4", ...]`` -> (nested dict, {"optim.learning_rate": origin})."""
    nested: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value (e.g. optim.learning_rate=3e-4)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}: malformed key {key!r}")
        value = yaml.safe_load(text) if text.strip() else None
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {p!r} is not a section")
        node[parts[-1]] = value
        origins[key] = f"--set {item}"
    return nested, origins


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | pathlib.Path, overrides: list[str] = ()) -> Config:
    """Reads a YAML config, applies ``key=value`` overrides, validates.

    Raises:
        ConfigError: unreadable file or a schema violation, naming the key and the file.
    """
    path = pathlib.Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections; got {raw!r}")
    nested, origins = parse_overrides(list(overrides))
    return from_dict(_merge(raw, nested), source=str(path), name=path.stem, origins=origins)
