"""Prints the table of measured differences, jaxrnn vs Keras / PyTorch / Flax (markdown).

    python -m tests.parity_report > table.md      # from the repository root, ~2 minutes

Columns: max |output diff| and max |final-state diff| (divided by max(1, |peer value|)),
and max relative parameter-gradient difference; float32, random weights and inputs
(``tests/parity_cases.py``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from tests import parity_cases as pc  # noqa: E402

KINDS = [("simple", ()), ("lstm", ()), ("gru", ()), ("gru", (("reset_after", False),))]
OPTIONS = [
    ("simple", (("activation", "relu"),)),
    ("lstm", (("use_bias", False),)),
    ("lstm", (("unit_forget_bias", False), ("recurrent_activation", "hard_sigmoid"))),
    ("gru", (("use_bias", False),)),
    ("gru", (("reset_after", False), ("use_bias", False))),
    ("gru", (("activation", "relu"), ("recurrent_activation", "hard_sigmoid"))),
]
MODES = {
    "plain": {},
    "mask right-padded": {"mask": "right"},
    "mask arbitrary": {"mask": "arbitrary"},
    "go_backwards + mask right": {"go_backwards": True, "mask": "right"},
    "go_backwards + mask arbitrary": {"go_backwards": True, "mask": "arbitrary"},
    "dropout 0.3": {"dropout": 0.3},
    "dropout 0.3 + recurrent 0.25 + mask": {
        "dropout": 0.3,
        "recurrent_dropout": 0.25,
        "mask": "right",
    },
}


def _name(kind, opts):
    return kind + "".join(f" {k}={v}" for k, v in opts)


def _row(cell, option, peer, r):
    grad = f"{r['grad']:.1e}" if "grad" in r else "—"
    return f"| {cell} | {option} | {peer} | {r['out']:.1e} | {r['state']:.1e} | {grad} |"


def main() -> None:
    rows = ["| cell | option | peer | out | state | grad (rel) |", "|---|---|---|---|---|---|"]
    for kind, opts in KINDS:
        for mode, kw in MODES.items():
            rows.append(_row(_name(kind, opts), mode, "Keras 3", pc.keras_case(kind, opts, **kw)))
    for kind, opts in OPTIONS:
        rows.append(
            _row(
                _name(kind, opts),
                "mask arbitrary",
                "Keras 3",
                pc.keras_case(kind, opts, mask="arbitrary"),
            )
        )
    for kind in ("simple", "lstm", "gru"):
        for mm in ("concat", "sum", "mul", "ave", None):
            r = pc.keras_bidirectional_case(kind, merge_mode=mm, mask="right")
            rows.append(_row(kind, f"Bidirectional merge={mm}, mask right", "Keras 3", r))
        r = pc.keras_bidirectional_case(kind, return_sequences=False, mask="arbitrary")
        rows.append(_row(kind, "Bidirectional last output, mask arbitrary", "Keras 3", r))
    for kind in ("simple", "lstm", "gru"):
        for layers, bi, lengths in [
            (1, False, False),
            (1, False, True),
            (2, True, True),
            (3, True, False),
        ]:
            option = (
                f"num_layers={layers}{' bidirectional' if bi else ''}{' packed' if lengths else ''}"
            )
            r = pc.torch_case(kind, num_layers=layers, bidirectional=bi, lengths=lengths)
            rows.append(_row(kind, option, "PyTorch", r))
    rows.append(
        _row(
            "simple",
            "relu, no bias, packed",
            "PyTorch",
            pc.torch_case("simple", nonlinearity="relu", bias=False, lengths=True),
        )
    )
    rows.append(
        _row(
            "gru",
            "no bias, 2 layers bidirectional packed",
            "PyTorch",
            pc.torch_case("gru", bias=False, num_layers=2, bidirectional=True, lengths=True),
        )
    )
    for kind in ("simple", "lstm", "lstm_optimized", "gru"):
        for lengths in (False, True):
            r = pc.flax_case(kind, lengths=lengths)
            rows.append(_row(kind, "seq_lengths" if lengths else "plain", "Flax linen nn.RNN", r))
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
