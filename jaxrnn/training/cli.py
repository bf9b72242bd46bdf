"""``python train.py --config configs/NAME.yaml [--set key=value ...] [--resume [RUN]]``.

Each failure is one line on stderr and its own exit status (:data:`EXIT_CODES`, also in
``--help``); none prints a traceback. Parsing the arguments imports no JAX, so ``--help``
answers at once; its config list and key table are generated (:mod:`jaxrnn.training.usage`).
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxrnn.training.config import ConfigError, load_config

EXITED = 0
DIVERGED = 1
CONFIG_ERROR = 2
DATA_ERROR = 3
RUN_DIR_ERROR = 4
OUT_OF_MEMORY = 5
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

EXIT_CODES = {
    EXITED: "finished",
    DIVERGED: "diverged: NaN/inf loss, gradient or parameters (the message names a checkpoint "
    "to --resume from)",
    CONFIG_ERROR: "config or usage error (the message names the key and the file or --set)",
    DATA_ERROR: "data error: data set or its cache missing, incomplete or corrupt",
    RUN_DIR_ERROR: "run directory or checkpoint error: locked by another run, corrupt or "
    "incompatible checkpoint, damaged metrics.jsonl",
    OUT_OF_MEMORY: "out of memory (lower train.batch_size or set model.remat)",
    INTERRUPTED: "interrupted by Ctrl-C (checkpoint saved; continue with --resume)",
}


def build_parser() -> argparse.ArgumentParser:
    from jaxrnn.training import usage

    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a jaxrnn model from a config. Each run writes its own directory,\n"
        "runs/<config name>/<date-time>/ (metrics.jsonl, curves.png, checkpoints/, summary.json),\n"
        "unless train.run_dir names one; --resume continues the latest.",
        epilog=usage.epilog(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue the latest run of this config from its latest checkpoint, or the run "
        "RUN (a directory, or a run's name under runs/<config name>/)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return CONFIG_ERROR
    from jaxrnn.training.checkpoint import CheckpointError  # after the config: fast errors
    from jaxrnn.training.data import DataError
    from jaxrnn.training.loop import Diverged, train

    def fail(kind: str, e: BaseException, code: int) -> int:
        print(f"{kind}: {e}", file=sys.stderr)
        return code

    try:
        result = train(cfg, resume=args.resume)
    except ConfigError as e:
        return fail("config error", e, CONFIG_ERROR)
    except (DataError, FileNotFoundError) as e:  # the data loaders name the missing file
        return fail("data error", e, DATA_ERROR)
    except CheckpointError as e:
        return fail("run directory error", e, RUN_DIR_ERROR)
    except ValueError as e:
        return fail("error", e, CONFIG_ERROR)
    except Diverged as e:
        return fail("diverged", e, DIVERGED)
    except KeyboardInterrupt:  # a second Ctrl-C stops at once, without a checkpoint
        print("interrupted (no checkpoint written since the last one)", file=sys.stderr)
        return INTERRUPTED
    except RuntimeError as e:  # XLA's JaxRuntimeError / XlaRuntimeError
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"out of memory: {first[:200]}. Lower train.batch_size (--set "
            f"train.batch_size={max(1, cfg.train.batch_size // 2)}) or set model.remat "
            f"(--set model.remat=sqrt).",
            file=sys.stderr,
        )
        return OUT_OF_MEMORY
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
    return EXITED if result.status == "finished" else INTERRUPTED


def run() -> None:
    """``train.py`` and ``jaxrnn-train``: parse the arguments (``--help`` ends here), restart once
    with the malloc tunables (:func:`jaxrnn.training.host.restart_with_tunables`), run CPU steps
    inline (:func:`jaxrnn.training.host.inline_cpu_dispatch`), then :func:`main`."""
    build_parser().parse_args()
    from jaxrnn.training.host import inline_cpu_dispatch, restart_with_tunables

    restart_with_tunables()
    inline_cpu_dispatch()
    sys.exit(main())


if __name__ == "__main__":
    run()
