"""``train.py --help``: the shipped configs and every config key, generated from the sources.

The key table is read from the schema in :mod:`jaxrnn.training.config` (each field's type,
default and the comment beside it), and the config list from the header comments of
``configs/*.yaml``, so the help cannot drift from either. Nothing here imports JAX: ``--help``
answers at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import pathlib
import re
import textwrap
import tokenize

import yaml

from jaxrnn.training import config as config_module

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` for a dataclass: the comment at the end of the field's line, or
    else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines: dict[int, str] = {}  # line number -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            lines[tok.start[0]] = tok.string.lstrip("#").strip()
    text = source.splitlines()
    out = {}
    for i, line in enumerate(text, start=1):
        m = re.match(r"\s+(\w+):", line)
        if not m or m.group(1) not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if i in lines and not line.lstrip().startswith("#"):
            out[m.group(1)] = lines[i]
            continue
        above, j = [], i - 1
        while j in lines and text[j - 1].lstrip().startswith("#"):
            above.insert(0, lines[j])
            j -= 1
        if above:
            out[m.group(1)] = " ".join(above)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def _section_rows(prefix: str, cls: type) -> list[tuple[str, str, str, str]]:
    comments = field_comments(cls)
    return [
        (f"{prefix}.{f.name}", str(f.type), _default(f), comments.get(f.name, ""))
        for f in dataclasses.fields(cls)
    ]


def config_keys() -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """The schema as ``[(heading, [(key, type, default, meaning), ...]), ...]``."""
    c = config_module
    groups = [
        (
            "top level",
            [
                ("task", "str", "(required)", " | ".join(c.TASK_SECTIONS)),
                ("seed", "int", "0", "initialisation, batch order and dropout"),
                ("name", "str", "the config file's stem", "names the default run directory"),
                (
                    "target",
                    "str | None",
                    "null",
                    "what the run should reach on its final "
                    "evaluation, 'METRIC OP VALUE' (e.g. test_accuracy >= 0.85; metrics: "
                    + "; ".join(f"{t}: {', '.join(m)}" for t, m in c.TARGET_METRICS.items())
                    + "), drawn on curves.png and checked in summary.json",
                ),
            ],
        )
    ]
    for task, (data_cls, model_cls) in c.TASK_SECTIONS.items():
        rows = _section_rows("data", data_cls) + _section_rows("model", model_cls)
        groups.append((f"task: {task}", rows))
    groups.append(("optim (every task)", _section_rows("optim", c.OptimConfig)))
    groups.append(("train (every task)", _section_rows("train", c.TrainConfig)))
    groups.append(("diagnostics (every task)", _section_rows("diagnostics", c.DiagnosticsConfig)))
    return groups


def shipped_configs(directory: pathlib.Path = CONFIG_DIR) -> list[tuple[str, str, str]]:
    """``[(file, purpose, target), ...]``: the purpose from each config's header comment (up to
    its "Target:"), the target from its ``target`` key."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        text = " ".join(header)
        purpose = text.split("Target:")[0].strip().rstrip(".")
        target = (yaml.safe_load(path.read_text()) or {}).get("target") or ""
        out.append((path.name, purpose, target))
    return out


def epilog(exit_codes: dict[int, str]) -> str:
    """The text after argparse's option list: configs, keys, exit codes, examples."""
    parts = ["shipped configs (configs/):"]
    for name, purpose, target in shipped_configs():
        parts.append(f"  {name}")
        parts.append(
            textwrap.fill(purpose, 96, initial_indent="      ", subsequent_indent="      ")
        )
        if target:
            parts.append(f"      target: {target}")
    parts.append("")
    parts.append("config keys (set in the YAML file or with --set key=value):")
    for heading, rows in config_keys():
        parts.append(f"  [{heading}]")
        for key, tp, default, meaning in rows:
            parts.append(f"  {key}: {tp} = {default}")
            if meaning:
                parts.append(textwrap.fill(meaning, 96, initial_indent="      ",
                                           subsequent_indent="      "))  # fmt: skip
    parts.append("")
    parts.append("exit status:")
    parts += [f"  {code:>3}  {meaning}" for code, meaning in sorted(exit_codes.items())]
    parts.append("")
    parts.append("examples:")
    parts += [
        "  .venv/bin/python train.py --config configs/imdb_simple_rnn.yaml",
        "  .venv/bin/python train.py --config configs/adding_problem.yaml --set train.steps=200",
        "  .venv/bin/python train.py --config configs/imdb_lstm.yaml --resume",
    ]
    return "\n".join(parts)
