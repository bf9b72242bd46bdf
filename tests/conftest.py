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


# The combinatorial equivalence tests below (each parametrization compiles its own programs,
# seconds each on the 2-core CI machine) run a subset of their grid in the default suite: the
# fewest parametrizations that show every value of every parameter at least once, topped up to
# one in ``k``; the others are marked ``slow`` and run after it in .ci/run (``pytest -m slow``),
# so CI still runs every one. ``pytest -m "slow or not slow"`` runs all at once. (Measured on a
# machine of the CI kind: the default suite took 1,171 s with all of them.)
THINNED = {
    "test_fast.py::test_classifier_lengths_and_dropout_equal_plain": 6,
    "test_fast.py::test_rnn_lengths_and_reverse_equal_plain": 6,
    "test_fast.py::test_rnn_outputs_and_grads_equal_plain": 2,
    "test_fast.py::test_short_sequences_equal_plain": 3,
    "test_fast.py::test_classifier_short_sequences_equal_plain": 3,
    "test_layers.py::test_recurrent_fast_matches_loop": 6,
    "test_layers.py::test_recurrent_mask_matches_loop": 3,
    "test_parity.py::test_keras_layer": 4,
    "test_parity.py::test_keras_layer_options": 2,
    "test_parity.py::test_keras_bidirectional": 2,
    "test_parity.py::test_flax_linen": 2,
    "test_parity.py::test_torch": 2,
    "test_gpu.py::test_classifier_gpu_branch_equals_plain": 3,
    "test_gpu.py::test_fast_rnn_gpu_branch_equals_plain": 3,
    "test_gpu.py::test_vmap_of_gpu_branch_equals_plain": 3,
    "test_gpu.py::test_simple_kernels_equal_xla_loops": 2,
    "test_gpu.py::test_lstm_kernels_equal_xla_loops": 3,
    "test_gpu.py::test_gru_kernels_equal_xla_loops": 2,
    "test_rnn.py::test_grads_match_finite_differences": 2,
    "test_remat.py::test_remat_values_and_grads_equal_full": 2,
    "test_remat.py::test_fast_remat_values_and_grads_equal_plain": 2,
    "test_native.py::test_seed_classifier_gradients_native_vs_float64_plain": 2,
    "test_native.py::test_fast_rnn_native_vs_float64_plain": 2,
    "test_native.py::test_simple_scan_gradients_native_vs_xla_loops": 2,
    "test_native.py::test_lstm_scan_gradients_native_vs_xla_loops": 2,
    "test_native.py::test_gru_scan_gradients_native_vs_xla_loops": 2,
}


def _values(item) -> set:
    callspec = getattr(item, "callspec", None)
    return {(k, repr(v)) for k, v in callspec.params.items()} if callspec else set()


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    groups: dict[str, list] = {}
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if name in THINNED and not item.get_closest_marker("slow"):
            groups.setdefault(name, []).append(item)
    for name, group in groups.items():
        kept, shown = [], set()
        while True:  # greedy: the parametrization that shows the most values not yet shown
            best = max(group, key=lambda it: len(_values(it) - shown))
            if not _values(best) - shown:
                break
            kept.append(best)
            shown |= _values(best)
        for item in group[:: THINNED[name]]:  # top up, spread over the grid
            if len(kept) >= -(-len(group) // THINNED[name]):
                break
            if item not in kept:
                kept.append(item)
        for item in group:
            if item not in kept:
                item.add_marker(pytest.mark.slow)
