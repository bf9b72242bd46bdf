"""Test settings shared by the whole suite.

float64 is switched on so that gradient checks can be tight (1e-8); tests that
want float32 ask for it explicitly.
"""

import atexit
import contextlib
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import backends
from jaxrnn.backends import cpu, gpu

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache per test run, shared by the xdist workers (they inherit the
# variable from the process that starts them): the suite compiles many identical programs (the
# same models and shapes in different tests), and a hit skips XLA's compiler. It starts empty
# and is removed at the end; a cache of the user's own (JAX_COMPILATION_CACHE_DIR) is left alone.
# A torn read (one worker reading an entry the other is writing) costs a compilation; the
# warning JAX gives then is filtered in pyproject.toml.
_CACHE = "JAXRNN_TESTS_JAX_CACHE"
if _CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="jaxrnn-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ[_CACHE], ignore_errors=True)
if _CACHE in os.environ:
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

_NO_LLVM_OPT = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """The default tier (``-m "not slow"``) compiles its programs without LLVM's optimisation
    passes: its programs are small, so compiling is most of its time and the slower code costs
    little; the slow tier, whose training runs are compute-bound, keeps XLA's default. Set
    before the first computation, which is when XLA reads ``XLA_FLAGS``; the xdist workers and
    the tier's ``train.py`` subprocesses inherit it."""
    flags = os.environ.get("XLA_FLAGS", "")
    selected = config.getoption("markexpr", "").replace(" ", "")
    if selected == "notslow" and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_NO_LLVM_OPT}".strip()


# the Pallas kernels run on the CPU through Pallas's interpreter, every cell's kernels on
ALL_GPU = gpu.Config(interpret=True, cells=frozenset({"simple", "lstm", "gru"}))
BACKENDS = ["scan", "xla", "native", "pallas"]


@contextlib.contextmanager
def raises_naming(exc: type[BaseException], *parts: str):
    """``pytest.raises(exc)`` whose message contains each of ``parts`` verbatim: the expected
    value and the received one (or the identifying value: a path, a pid), so a message that
    loses either fails the test."""
    with pytest.raises(exc) as info:
        yield info
    message = str(info.value)
    missing = [p for p in parts if p not in message]
    assert not missing, f"{missing} not in the {exc.__name__} message: {message!r}"


@pytest.fixture
def key():
    return jax.random.key(0)


def make_backend(name: str) -> backends.Backend:
    """A backend by name for the tests (skips ``native`` where the kernels cannot run)."""
    if name == "native" and not cpu.available():
        reason = cpu.unsupported("lstm", "", jnp.float32, 4, 4)
        pytest.skip(f"native kernels unavailable here: {reason}")
    return backends.Backend(name, gpu=ALL_GPU)


@pytest.fixture(params=BACKENDS)
def backend(request) -> backends.Backend:
    """Every backend of ``rnn`` in turn (see test_backends.py)."""
    return make_backend(request.param)


def backend_dtype(b: backends.Backend):
    """float32 for the native kernels (their only dtype), float64 elsewhere."""
    return jnp.float32 if b.name == "native" else jnp.float64


def backend_tol(b: backends.Backend) -> dict:
    """Agreement with the float64 reference: float32 rounding for the native kernels (the
    absolute part relative to each array's largest entry: an entry that cancels to near zero
    keeps the rounding error of the terms it sums)."""
    if b.name == "native":
        return dict(rtol=2e-5, atol=2e-6, atol_scaled=True)
    return dict(rtol=1e-8, atol=1e-10)


def assert_trees_close(a, b, atol_scaled=False, **kw):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        leaf_kw = dict(kw)
        if atol_scaled and y.size:
            leaf_kw["atol"] = kw.get("atol", 0.0) * max(1.0, float(np.max(np.abs(y))))
        np.testing.assert_allclose(x, y, **leaf_kw)


def paths_taken(fn, *args) -> set[str]:
    """The backends whose code is in ``fn``'s program: ``native`` (an FFI call of the CPU
    kernels), ``pallas`` (a Pallas call), ``hoisted`` (a hoisted recurrence)."""
    text = str(jax.make_jaxpr(fn)(*args))
    found = set()
    if any(f"jaxrnn_{c}_" in text for c in ("simple", "lstm", "gru")):
        found.add("native")
    if "pallas_call" in text:
        found.add("pallas")
    if "jaxrnn_linear" in text or "_recurrence" in text:
        found.add("hoisted")
    return found


def assert_path(b: backends.Backend, fn, *args) -> None:
    """``fn``'s program runs backend ``b`` (and no kernel it did not name)."""
    found = paths_taken(fn, *args)
    if b.name == "scan":
        assert not found, found
    elif b.name == "xla":
        assert found == {"hoisted"}, found
    else:
        assert b.name in found and found <= {b.name, "hoisted"}, found


# The combinatorial equivalence tests below (each parametrization compiles its own programs,
# seconds each on the 2-core CI machine) run a subset of their grid in the default suite: the
# fewest parametrizations that show every value of every parameter at least once, topped up to
# one in ``k``; the others are marked ``slow`` and run after it in .ci/run (``pytest -m slow``),
# so CI still runs every one. ``pytest -m "slow or not slow"`` runs all at once.
THINNED = {
    "test_backends.py::test_every_transformation_equals_scan": 12,
    "test_backends.py::test_options_equal_scan": 16,
    "test_backends.py::test_embedded_inputs_equal_gathered_vectors": 12,
    "test_backends.py::test_padding_never_reaches_the_gradients": 12,
    "test_backends.py::test_input_dropout_mask_is_hoisted_and_equal": 3,
    "test_models.py::test_classifier_on_every_backend_equals_scan": 16,
    "test_models.py::test_classifier_short_sequences_equal_scan": 9,
    "test_layers.py::test_recurrent_on_every_backend_matches_loop": 16,
    "test_layers.py::test_recurrent_mask_matches_loop": 3,
    "test_gpu_kernels.py::test_kernels_at_padded_sizes_equal_scan": 9,
    "test_gpu_kernels.py::test_seed_step_lowers_to_triton_kernels_for_cuda": 3,
    "test_rnn.py::test_rnn_equals_numpy_loop": 4,
    "test_rnn.py::test_grads_match_finite_differences": 2,
    "test_remat.py::test_recurrent_remat_equals_full": 2,
    "test_remat.py::test_unidirectional_stack_remat_equals_full": 2,
    "test_training_loop.py::test_backend_trains_to_the_same_numbers": 5,
    "test_cells_gated.py::test_matches_numpy_loop": 3,
    "test_cells_gated.py::test_dropout_masks_match_numpy_loop": 3,
    "test_parity.py::test_keras_layer": 8,
    "test_parity.py::test_keras_layer_options": 4,
    "test_parity.py::test_keras_bidirectional": 5,
    "test_parity.py::test_flax_linen": 4,
    "test_parity.py::test_torch": 4,
    "test_parity.py::test_round_trip_torch": 3,
    "test_parity.py::test_round_trip_keras": 3,
    "test_parity.py::test_round_trip_flax": 2,
    "test_linear.py::test_every_transformation_of_a_stand_in_kernel_equals_its_reference": 3,
    "test_linear_cells.py::test_scan_equals_rnn": 2,
    "test_cpu_kernels.py::test_forward_matches_numpy": 8,
    "test_cpu_kernels.py::test_backward_matches_numpy": 8,
    "test_cpu_kernels.py::test_lstm_forward_matches_numpy": 2,
    "test_cpu_kernels.py::test_lstm_backward_matches_numpy": 3,
    "test_cpu_kernels.py::test_gru_forward_matches_numpy": 2,
    "test_cpu_kernels.py::test_gru_backward_matches_numpy": 2,
    "test_cpu_kernels.py::test_backward_gradient_rows": 3,
    "test_cpu_kernels.py::test_table_projection_and_its_gradient_match_numpy": 2,
    "test_cpu_kernels.py::test_rows_projection_matches_numpy": 2,
    "test_cpu_kernels.py::test_rows_projection_gradient_matches_numpy": 2,
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
