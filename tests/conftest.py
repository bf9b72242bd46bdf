"""Test settings shared by the whole suite.

float64 is switched on so that gradient checks can be tight (1e-8); tests that
want float32 ask for it explicitly.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)
