"""Train a jaxrnn model: ``python train.py --config configs/imdb_simple_rnn.yaml``.

Thin entry point; the logic lives in :mod:`jaxrnn.training` (also installed as ``jaxrnn-train``).
On Linux the process first restarts itself with glibc malloc tunables that keep XLA's per-step
host buffers mapped (:mod:`jaxrnn.runtime`; LSTM/GRU steps ~1.4x faster on a CPU);
``JAXRNN_HOST_TUNABLES=0`` skips it.
"""

import sys

if __name__ == "__main__":
    from jaxrnn.runtime import restart_with_tunables

    restart_with_tunables()  # replaces this process once; returns in the restarted one
    from jaxrnn.training.cli import main

    sys.exit(main())
