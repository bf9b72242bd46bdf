"""Config loading: every shipped config validates; bad configs name the key and the file."""

import pathlib

import pytest

from jaxrnn import backends
from jaxrnn.training import config
from jaxrnn.training.cli import main
from jaxrnn.training.config import ConfigError, load_config

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.task in config.TASK_SECTIONS


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


GOOD = "task: adding\ntrain:\n  steps: 10\n"


@pytest.mark.parametrize(
    "text, overrides, must_contain",
    [
        # unknown keys, at every level
        (
            "task: adding\ntrain: {steps: 10}\nfoo: 1\n",
            [],
            ["unknown key 'foo'; expected one of ['data', ", "bad.yaml"],
        ),
        (
            "task: adding\ntrain: {steps: 10, stepz: 3}\n",
            [],
            ["'train.stepz'; expected one of [", "'steps']", "bad.yaml"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\ndata: {maxlen: 3}\n",
            [],
            ["'data.maxlen'; expected one of ['T', 'test_seed', 'test_size']"],
        ),
        (GOOD, ["optim.lr=0.1"], ["'optim.lr'", "'learning_rate'", "--set optim.lr=0.1"]),
        # wrong types
        ("task: adding\ntrain: {steps: ten}\n", [], ["'train.steps' must be int", "'ten'"]),
        ("task: adding\ntrain: {steps: 10.5}\n", [], ["'train.steps' must be int; got 10.5"]),
        ("task: adding\ntrain: {steps: true}\n", [], ["'train.steps' must be int; got True"]),
        (
            "task: adding\ntrain: {steps: 10, progress: 1}\n",
            [],
            ["'train.progress' must be bool; got 1 (int)"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\nmodel: {cell_options: 3}\n",
            [],
            ["'model.cell_options' must be a mapping of names to values; got 3"],
        ),
        (GOOD, ["optim.learning_rate=fast"], ["'optim.learning_rate' must be float", "--set"]),
        (
            "task: adding\ntrain: {steps: 10}\noptim: [1, 2]\n",
            [],
            ["section 'optim' must be a mapping; got [1, 2]"],
        ),
        # missing values
        (
            "task: adding\ntrain:\n  steps:\n",
            [],
            ["give exactly one of 'train.steps' and 'train.epochs'; got neither"],
        ),
        (
            "task: adding\ntrain: {steps: 10, epochs: 2}\n",
            [],
            ["give exactly one of 'train.steps' and 'train.epochs'; got both (10 and 2.0)"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\noptim:\n  learning_rate:\n",
            [],
            ["missing value for 'optim.learning_rate' (expected float)", "bad.yaml"],
        ),
        (
            "train: {steps: 10}\n",
            [],
            ["missing value for 'task' (expected one of ['adding'", "bad.yaml"],
        ),
        ("task:\n", [], ["missing value for 'task' (expected one of ['adding'"]),
        # values outside their choices
        (
            "task: cifar\n",
            [],
            ["'task' must be one of ['adding', 'imdb', 'shakespeare']; got 'cifar'"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\noptim: {name: lion}\n",
            [],
            ["'optim.name' must be one of ['adam', ", "; got 'lion'"],
        ),
        (
            "task: imdb\ntrain: {steps: 10}\ndata: {padding: middle}\n",
            [],
            ["'data.padding' must be one of ['pre', 'post']; got 'middle'"],
        ),
        (
            "task: imdb\ntrain: {steps: 10}\nmodel: {recurrent_dropout: 1.0}\n",
            [],
            ["'model.recurrent_dropout' must be in [0, 1)", "1.0", "bad.yaml"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\nmodel: {dropout: 0.1}\n",
            [],
            ["'model.dropout'; expected one of ['backend', "],
        ),
        (
            GOOD,
            ["model.remat=log"],
            ["'model.remat' must be a positive int, 'sqrt' or null; got 'log'"],
        ),
        # a key older configs had names what replaced it
        (GOOD, ["model.fast=true"], ["'model.fast' was replaced", "'model.backend'", "--set"]),
        (
            GOOD,
            ["model.backend=fast"],
            [f"'model.backend' must be one of {list(backends.NAMES)}", "; got 'fast'"],
        ),
        (GOOD, ["model.remat=0"], ["'model.remat' must be a positive int, 'sqrt' or null; got 0"]),
        (GOOD, ["model.remat=2.5"], ["'model.remat' must be int; got 2.5"]),
        (
            "task: shakespeare\ntrain: {steps: 10}\nmodel: {num_layers: 0}\n",
            [],
            ["'model.num_layers' must be >= 1; got 0", "bad.yaml"],
        ),
        (
            "task: shakespeare\ntrain: {steps: 10}\nmodel: {dropout: 1.5}\n",
            [],
            ["'model.dropout' must be in [0, 1); got 1.5"],
        ),
        (
            "task: adding\ntrain: {steps: 10}\nmodel: {num_layers: 2}\n",
            [],
            ["'model.num_layers'; expected one of ['backend', "],
        ),
        (
            "task: adding\ntrain: {steps: 10, batch_size: 0}\n",
            [],
            ["'train.batch_size' must be a finite number > 0; got 0", "bad.yaml"],
        ),
        # a value from --set is blamed on the --set item, not on the file
        (
            GOOD,
            ["train.batch_size=0"],
            ["--set train.batch_size=0", "'train.batch_size' must be a finite number > 0; got 0"],
        ),
        (
            GOOD,
            ["train.steps=0"],
            ["--set train.steps=0", "'train.steps' must be a finite number > 0; got 0"],
        ),
        (
            "task: adding\ntrain: {steps: -5}\n",
            [],
            ["'train.steps' must be a finite number > 0; got -5", "bad.yaml"],
        ),
        (
            "task: adding\ntrain: {epochs: 0}\n",
            [],
            ["'train.epochs' must be a finite number > 0; got 0.0", "bad.yaml"],
        ),
        (GOOD, ["data.T=0"], ["--set data.T=0", "'data.T' must be a finite number > 0; got 0"]),
        (
            "task: adding\ntrain: {steps: 10}\ndata: {T: -3}\n",
            [],
            ["'data.T' must be a finite number > 0; got -3"],
        ),
        (
            GOOD,
            ["optim.learning_rate=.nan"],
            ["--set optim.learning_rate=.nan", "must be a finite number > 0; got nan"],
        ),
        (
            GOOD,
            ["optim.learning_rate=.inf"],
            ["'optim.learning_rate' must be a finite number > 0; got inf"],
        ),
        (
            GOOD,
            ["optim.learning_rate=-1e-3"],
            ["'optim.learning_rate' must be a finite number > 0; got -0.001"],
        ),
        (
            GOOD,
            ["train.keep_checkpoints=0"],
            ["'train.keep_checkpoints' must be a finite number > 0; got 0"],
        ),
        # a typo inside cell_options names the key and the cell's keyword arguments
        (
            GOOD,
            ["model.cell_options.activaton=relu"],
            [
                "--set model.cell_options.activaton=relu",
                "'model.cell_options.activaton'",
                "'activation'",
                "'recurrent_initializer'",
            ],
        ),
        (
            "task: shakespeare\ntrain: {steps: 10}\nmodel: {cell_options: {reset_afer: 1}}\n",
            [],
            ["'model.cell_options.reset_afer'", "'reset_after'", "bad.yaml"],
        ),
        (GOOD, ["model.cell=rnn"], ["--set model.cell=rnn", "'rnn'", "'simple'"]),
        (
            "- just\n- a list\n",
            [],
            ["bad.yaml", "must be a mapping of sections; got ['just', 'a list']"],
        ),
        ("task: [unclosed\n", [], ["bad.yaml", "not valid YAML", "line 1, column 7"]),
        (GOOD, ["novalue"], ["--set novalue: expected key=value"]),
    ],
)
def test_bad_config_names_key_and_source(tmp_path, text, overrides, must_contain):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    for piece in must_contain:
        assert piece in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_and_convert(tmp_path):
    path = _write(tmp_path, GOOD + "optim: {learning_rate: 1.0e-3}\n")
    cfg = load_config(
        path,
        [
            "optim.learning_rate=3e-4",
            "train.steps=7",
            "optim.clip_norm=null",
            "model.cell_options={activation: relu}",
            "data.T=12",
        ],
    )
    assert cfg.optim.learning_rate == pytest.approx(3e-4) and isinstance(
        cfg.optim.learning_rate, float
    )
    assert cfg.train.steps == 7 and cfg.optim.clip_norm is None and cfg.data.T == 12
    assert cfg.model.cell_options == {"activation": "relu"}
    # an int where a float is expected is accepted and converted
    assert load_config(path, ["optim.learning_rate=1"]).optim.learning_rate == 1.0
    # nested overrides merge into a mapping from the file
    path2 = _write(tmp_path, GOOD + "model: {cell_options: {activation: relu}}\n")
    merged = load_config(path2, ["model.cell_options.recurrent_initializer=identity"])
    assert merged.model.cell_options == {"activation": "relu", "recurrent_initializer": "identity"}


def test_cli_reports_config_error(tmp_path, capsys):
    path = _write(tmp_path, "task: adding\ntrain: {steps: 10, stepz: 3}\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.stepz" in err and str(path) in err
