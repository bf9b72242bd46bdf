"""train.py --help's generated parts: every schema key with its type and default, every
shipped config with its target, and no JAX import to print them."""

import dataclasses
import subprocess
import sys

import yaml

from jaxrnn.training import config, usage


def test_every_schema_key_is_listed_with_its_type_and_default():
    text = usage.epilog({0: "finished"})
    sections = [("optim", config.OptimConfig), ("train", config.TrainConfig)]
    for data_cls, model_cls in config.TASK_SECTIONS.values():
        sections += [("data", data_cls), ("model", model_cls)]
    for prefix, cls in sections:
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = "null" if default is None else repr(default)
            assert f"  {prefix}.{f.name}: {f.type} = {shown}\n" in text, (prefix, f.name)
    # the meaning is the comment beside the field in config.py
    assert "Keras's recurrent_dropout on h_{t-1}, training only" in text


def test_every_shipped_config_is_listed_with_its_target():
    listed = {name: (purpose, target) for name, purpose, target in usage.shipped_configs()}
    files = sorted(p.name for p in usage.CONFIG_DIR.glob("*.yaml"))
    assert sorted(listed) == files and len(files) >= 7
    for name in files:
        purpose, target = listed[name]
        raw = yaml.safe_load((usage.CONFIG_DIR / name).read_text())
        assert target == raw["target"] and purpose and "Target" not in purpose, name
        config.parse_target(target, raw["task"])  # a well-formed target of that task


def test_field_comments_reads_trailing_and_preceding_comments():
    @dataclasses.dataclass
    class Example:
        a: int = 1  # the trailing one
        # the lines
        # above
        b: str = "x"
        c: float = 0.0

    assert usage.field_comments(Example) == {"a": "the trailing one", "b": "the lines above"}


def test_reading_the_schema_imports_no_jax():
    code = (
        "import sys; from jaxrnn.training import usage; usage.epilog({}); "
        "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
