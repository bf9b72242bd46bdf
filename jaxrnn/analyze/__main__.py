"""``python -m jaxrnn.analyze RUN_DIR``: see :mod:`jaxrnn.analyze`."""

import sys

from jaxrnn.analyze import main

sys.exit(main())
