"""jaxrnn: recurrent neural networks as pure JAX functions.

::

    from jaxrnn import cells, rnn
    params = cells.simple.init(key, input_size=32, hidden_size=100)
    h_T, hs = rnn(cells.simple.cell, params, xs)   # xs [B, T, D] -> h_T [B, H], hs [B, T, H]

Public modules: :mod:`jaxrnn.cells` (the cells), :mod:`jaxrnn.backends` (what runs ``rnn``),
:mod:`jaxrnn.parallel` (parallel-in-time evaluation: linear scans, DEER / ELK for any cell),
:mod:`jaxrnn.dynamics` (gradient flow, Jacobian and Lyapunov spectra, fixed points),
:mod:`jaxrnn.dropout`, :mod:`jaxrnn.models`, :mod:`jaxrnn.nn` (Flax modules),
:mod:`jaxrnn.convert` (Keras / PyTorch / Flax weights), :mod:`jaxrnn.reference` (NumPy),
:mod:`jaxrnn.training`.
"""

import importlib
import importlib.abc
import sys
import typing

__version__ = "0.1.0"

# Imported on first use, so that a command that only parses arguments (train.py --help) or
# reads a config does not pay for importing JAX.
_LAZY = {
    "backends": None, "cells": None, "dropout": None, "dynamics": None, "models": None,
    "parallel": None,
    "BiParams": "_bidirectional", "bidirectional": "_bidirectional",
    "recurrent": "_recurrent",
    "Embedded": "_rnn", "reverse_padded": "_rnn", "rnn": "_rnn",
    "stack": "_stack", "torch_state": "_stack",
}  # fmt: skip

if typing.TYPE_CHECKING:
    from jaxrnn import backends, cells, dropout, dynamics, models, parallel
    from jaxrnn._bidirectional import BiParams, bidirectional
    from jaxrnn._recurrent import recurrent
    from jaxrnn._rnn import Embedded, reverse_padded, rnn
    from jaxrnn._stack import stack, torch_state


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")
    module = importlib.import_module(f"jaxrnn.{_LAZY[name] or name}")
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Modules that were replaced: importing one says what replaced it.
_REPLACED = {
    "jaxrnn.fast": "jaxrnn.fast was folded into jaxrnn.rnn: rnn(..., backend='auto') picks the "
    "fastest path itself (backend='xla' / 'native' / 'pallas' names one; see jaxrnn.backends); "
    "fast.classifier_logits is models.classifier_logits, and the layers' fast=True is backend=",
    "jaxrnn.native": "jaxrnn.native moved to jaxrnn.backends.cpu (rnn(..., backend='native'))",
    "jaxrnn.gpu": "jaxrnn.gpu moved to jaxrnn.backends.gpu (rnn(..., backend='pallas'); its "
    "module settings are jaxrnn.backends.gpu.Config)",
    "jaxrnn.layer": "jaxrnn.layer is private now: use jaxrnn.rnn and jaxrnn.reverse_padded",
    "jaxrnn.recurrent": "jaxrnn.recurrent: use `from jaxrnn import recurrent` (the module is private now)",
    "jaxrnn.bidirectional": "jaxrnn.bidirectional: use `from jaxrnn import bidirectional, BiParams` (the module is private now)",
    "jaxrnn.stack": "jaxrnn.stack: use `from jaxrnn import stack, torch_state` (the module is private now)",
    "jaxrnn.runtime": "jaxrnn.runtime moved to jaxrnn.training.host (process settings of train.py; "
    "the library needs none)",
}


class _ReplacedModules(importlib.abc.MetaPathFinder):
    """Answers an import of a replaced module with what replaced it."""

    def find_spec(self, fullname, path, target=None):
        if fullname in _REPLACED:
            raise ImportError(_REPLACED[fullname], name=fullname)
        return None


if not any(isinstance(f, _ReplacedModules) for f in sys.meta_path):
    sys.meta_path.append(_ReplacedModules())

__all__ = [
    "BiParams", "Embedded", "backends", "bidirectional", "cells", "dropout", "dynamics", "models",
    "parallel", "recurrent", "reverse_padded", "rnn", "stack", "torch_state", "__version__",
]  # fmt: skip
