"""jaxrnn: recurrent neural networks as pure JAX functions.

from jaxrnn import cells, rnn
params = cells.simple.init(key, input_size=32, hidden_size=100)
h_T, hs = rnn(cells.simple.cell, params, xs)   # xs [B, T, D] -> h_T [B, H], hs [B, T, H]
"""

from jaxrnn import cells, nn
from jaxrnn.layer import reverse_padded, rnn

__version__ = "0.1.0"

__all__ = ["cells", "nn", "reverse_padded", "rnn", "__version__"]
