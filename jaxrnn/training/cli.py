"""``python train.py --config configs/NAME.yaml [--set key=value ...] [--resume]``.

Exit status: 0 finished, 130 interrupted by Ctrl-C (checkpoint saved), 1 diverged (NaN/inf
loss), 2 bad config / data / checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxrnn.training.checkpoint import CheckpointError
from jaxrnn.training.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a jaxrnn model from a config.")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/imdb_simple_rnn.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.learning_rate=3e-4 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in the run directory",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from jaxrnn.training.loop import Diverged, train  # after the config: fast errors

    try:
        result = train(cfg, resume=args.resume)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        return 1
    if result.sample:
        print(result.sample)
    print(
        json.dumps(
            {
                "status": result.status,
                "step": result.step,
                "seconds": round(result.seconds, 1),
                **result.metrics,
            }
        )
    )
    return 0 if result.status == "finished" else 130


def run() -> None:
    """``train.py`` and ``jaxrnn-train``: restart once with the malloc tunables
    (:func:`jaxrnn.training.host.restart_with_tunables`), run CPU steps inline
    (:func:`jaxrnn.training.host.inline_cpu_dispatch`), then :func:`main`."""
    from jaxrnn.training.host import inline_cpu_dispatch, restart_with_tunables

    restart_with_tunables()
    inline_cpu_dispatch()
    sys.exit(main())


if __name__ == "__main__":
    run()
