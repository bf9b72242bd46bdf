"""Train a jaxrnn model: ``python train.py --config configs/imdb_simple_rnn.yaml``.

Thin entry point; the logic lives in :mod:`jaxrnn.training` (also installed as ``jaxrnn-train``).
"""

import sys

from jaxrnn.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
