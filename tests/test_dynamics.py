"""jaxrnn.dynamics against independent truths: hand-derived Jacobians, the NumPy reference's
BPTT, finite differences, the Lyapunov exponents and fixed points of cells with closed forms."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxrnn import cells, dynamics, reference

H, D = 3, 2


class PairCarry(NamedTuple):
    a: jax.Array
    b: jax.Array


def pair_cell(params, carry, x):
    """A user's cell with a tuple carry and no ``initial_carry``: ``a`` a tanh RNN, ``b`` a
    leaky integrator of ``a``."""
    a = jnp.tanh(x @ params["U"] + carry.a @ params["W"])
    b = 0.5 * carry.b + a
    return PairCarry(a, b), b


def init_pair(key):
    k1, k2 = jax.random.split(key)
    return {
        "U": jax.random.normal(k1, (D, H), jnp.float64),
        "W": 0.8 * jax.random.normal(k2, (H, H), jnp.float64) / np.sqrt(H),
    }


def make(name, key=None):
    """``(cell, params, h0 [B, ...] or None, S)`` for a cell name, float64."""
    key = jax.random.key(0) if key is None else key
    if name == "pair":
        return pair_cell, init_pair(key), None, 2 * H
    mod = getattr(cells, name)
    params = mod.init(key, D, H, dtype=jnp.float64)
    if name == "lstm":  # non-zero biases, so every gate's derivative shows
        params = params.__class__(
            params.W_x, params.W_h, 0.3 * jax.random.normal(key, params.b.shape), "tanh", "sigmoid"
        )
    return mod.cell, params, None, 2 * H if name == "lstm" else H


def h0_for(name, B):
    """A random non-zero initial carry ``[B, ...]`` (the user cell has no initial_carry)."""
    k1, k2 = jax.random.split(jax.random.key(7))
    h = 0.5 * jax.random.normal(k1, (B, H), jnp.float64)
    c = 0.5 * jax.random.normal(k2, (B, H), jnp.float64)
    if name == "pair":
        return PairCarry(h, c)
    if name == "lstm":
        return cells.lstm.LSTMCarry(h, c)
    return h


def flat(carry):
    """One example's carry as ``[S]`` (the leaves in order)."""
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(carry)])


def unflat(like, s):
    leaves, treedef = jax.tree.flatten(like)
    out, i = [], 0
    for a in leaves:
        out.append(s[i : i + a.size].reshape(a.shape))
        i += a.size
    return jax.tree.unflatten(treedef, out)


CELLS = ["simple", "lstm", "gru", "pair"]

# --- step_jacobians ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CELLS)
def test_step_jacobians_equal_jacfwd_of_one_step(name):
    cell, params, _, S = make(name)
    B, T = 2, 5
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    h0 = h0_for(name, B)
    J = dynamics.step_jacobians(cell, params, xs, h0)
    assert J.shape == (B, T, S, S)
    like = jax.tree.map(lambda a: a[0], h0)

    @jax.jit
    def one_step(carry, x):  # the Jacobian of one step at carry, and the next carry
        step = lambda s: flat(cell(params, unflat(like, s), x)[0])  # noqa: E731
        return jax.jacfwd(step)(flat(carry)), cell(params, carry, x)[0]

    for b in range(B):
        carry = jax.tree.map(lambda a, b=b: a[b], h0)
        for t in range(T):
            expected, carry = one_step(carry, xs[b, t])
            np.testing.assert_allclose(J[b, t], expected, rtol=1e-12, atol=1e-14)


def test_step_jacobians_of_simple_cell_are_diag_one_minus_h2_times_w_h_transposed():
    cell, params, _, _ = make("simple")
    xs = np.asarray(jax.random.normal(jax.random.key(1), (6, D), jnp.float64))  # unbatched
    J = dynamics.step_jacobians(cell, params, xs)
    _, hs = reference.simple_rnn_forward(
        xs, *(np.asarray(a) for a in (params.W_x, params.W_h, params.b))
    )
    W_h = np.asarray(params.W_h)
    assert J.shape == (6, H, H)
    for t in range(6):
        np.testing.assert_allclose(J[t], np.diag(1 - hs[t] ** 2) @ W_h.T, rtol=1e-12, atol=1e-14)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_step_jacobians_of_lstm_equal_the_hand_derived_jacobian():
    cell, params, _, _ = make("lstm")
    x = np.asarray(jax.random.normal(jax.random.key(1), (1, D)))
    h0 = h0_for("lstm", 1)
    h, c = np.asarray(h0.h[0]), np.asarray(h0.c[0])
    W_x, W_h, b = (np.asarray(a) for a in (params.W_x, params.W_h, params.b))
    z = x[0] @ W_x + h @ W_h + b
    zi, zf, zg, zo = np.split(z, 4)
    i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
    c_new = f * c + i * g
    Wi, Wf, Wg, Wo = (W_h[:, k * H : (k + 1) * H].T for k in range(4))  # dz_k/dh
    dc_dh = (c * f * (1 - f))[:, None] * Wf + (g * i * (1 - i))[:, None] * Wi
    dc_dh += (i * (1 - g**2))[:, None] * Wg
    dc_dc = np.diag(f)
    tc = np.tanh(c_new)
    dh_dh = (tc * o * (1 - o))[:, None] * Wo + (o * (1 - tc**2))[:, None] * dc_dh
    dh_dc = np.diag(o * (1 - tc**2) * f)
    expected = np.block([[dh_dh, dh_dc], [dc_dh, dc_dc]])  # s = (h, c)
    J = dynamics.step_jacobians(cell, params, x[None], h0)  # xs [B=1, T=1, D]
    np.testing.assert_allclose(J[0, 0], expected, rtol=1e-12, atol=1e-14)


# --- carry_grad_norms ---------------------------------------------------------------------------


def test_carry_grad_norms_equal_the_reference_bptt():
    """The seed model's loss (a logistic readout of h_T): the norms against ``dL/dh_t`` of a
    NumPy BPTT loop on the reference's forward cache, the loop itself checked against the
    reference's ``seed_backward`` (its ``dW_h``, ``dW_x``, ``b`` are sums over those ``dh_t``)."""
    rng = np.random.default_rng(0)
    B, T, V, E = 3, 12, 7, D
    params = {
        "embedding": rng.normal(size=(V, E)),
        "rnn": {"W_x": rng.normal(size=(E, H)), "W_h": 0.9 * rng.normal(size=(H, H)) / np.sqrt(H),
                "b": 0.1 * rng.normal(size=H)},
        "W_o": rng.normal(size=(H, 1)),
        "b_o": np.array([0.2]),
    }  # fmt: skip
    tokens = rng.integers(0, V, size=(B, T))
    labels = np.array([0, 1, 1])
    _, cache = reference.seed_forward(params, tokens, labels)
    hs, xs = cache["hs"], cache["xs"]
    W_h = params["rnn"]["W_h"]
    dh = (cache["p"] - labels[:, None]) / B @ params["W_o"].T  # dL/dh_T
    dhs = np.zeros((T, B, H))
    dW_h, dW_x, db = np.zeros((H, H)), np.zeros((E, H)), np.zeros(H)
    for t in range(T - 1, -1, -1):  # reference.seed_backward's recursion, every dh_t kept
        dhs[t] = dh
        da = dh * (1 - hs[t + 1] ** 2)
        dW_h += hs[t].T @ da
        dW_x += xs[:, t].T @ da
        db += da.sum(0)
        dh = da @ W_h.T
    ref = reference.seed_backward(params, cache)
    for ours, theirs in (
        (dW_h, ref["rnn"]["W_h"]),
        (dW_x, ref["rnn"]["W_x"]),
        (db, ref["rnn"]["b"]),
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)

    cell_params = cells.simple.SimpleParams(**{k: jnp.asarray(v) for k, v in params["rnn"].items()})
    y = jnp.asarray(labels, jnp.float64)

    def loss_fn(h_T, ys):
        z = h_T @ params["W_o"][:, 0] + params["b_o"][0]
        return jnp.mean(y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z))

    norms = dynamics.carry_grad_norms(loss_fn, cells.simple.cell, cell_params, jnp.asarray(xs))
    assert norms.shape == (B, T)
    np.testing.assert_allclose(norms, np.linalg.norm(dhs, axis=-1).T, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batched", [True, False])
def test_carry_grad_norms_equal_finite_differences_of_a_carry_perturbation(name, batched):
    """A perturbation added to the carry after step t, the loss (on the final carry and every
    output) by central differences, in a Python loop of single steps."""
    cell, params, _, S = make(name)
    B, T = 2, 5
    xs = jax.random.normal(jax.random.key(3), (B, T, D), jnp.float64)
    h0 = h0_for(name, B)
    w = jax.random.normal(jax.random.key(4), (B, T, H), jnp.float64)
    if not batched:
        xs, h0, w = xs[0], jax.tree.map(lambda a: a[0], h0), w[0]

    def loss_fn(final, ys):
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final)) + jnp.sum(w * ys**2)

    norms = dynamics.carry_grad_norms(loss_fn, cell, params, xs, h0)
    step = jax.jit(lambda c, x: cell(params, c, x))

    def perturbed_loss(t, delta):  # delta [B, S] (or [S]) added to the carry after step t
        carry, ys = h0, []
        for i in range(T):
            carry, y = step(carry, xs[..., i, :])
            if i == t:
                d = (
                    jax.vmap(unflat, in_axes=(None, 0))(jax.tree.map(lambda a: a[0], carry), delta)
                    if batched
                    else unflat(carry, delta)
                )
                carry = jax.tree.map(jnp.add, carry, d)
            ys.append(y)
        return float(loss_fn(carry, jnp.stack(ys, axis=-2)))

    eps = 1e-6
    shape = (B, S) if batched else (S,)
    fd = np.zeros((T, *shape))
    for t in range(T):
        for idx in np.ndindex(*shape):
            e = np.zeros(shape)
            e[idx] = eps
            fd[(t, *idx)] = (perturbed_loss(t, e) - perturbed_loss(t, -e)) / (2 * eps)
    expected = np.linalg.norm(fd, axis=-1)
    expected = expected.T if batched else expected
    np.testing.assert_allclose(norms, expected, rtol=1e-6, atol=1e-9)


# --- jacobian_product_norms ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simple", "lstm"])
def test_jacobian_product_norms_equal_the_norm_of_the_product_of_step_jacobians(name):
    cell, params, _, S = make(name)
    xs = jax.random.normal(jax.random.key(5), (2, 7, D), jnp.float64)
    J = np.asarray(dynamics.step_jacobians(cell, params, xs, h0_for(name, 2)))  # checked above
    norms = dynamics.jacobian_product_norms(cell, params, xs, h0_for(name, 2))
    for b in range(2):
        P = np.eye(S)
        expected = [1.0]
        for t in range(6, 0, -1):  # ds_T/ds_t = J_T ... J_{t+1}
            P = P @ J[b, t]
            expected.append(np.linalg.norm(P, 2))
        np.testing.assert_allclose(norms[b], expected[::-1], rtol=1e-10)


# --- lyapunov_spectrum --------------------------------------------------------------------------


def _linear(W_h):
    W_h = jnp.asarray(W_h, jnp.float64)
    n = W_h.shape[0]
    return cells.simple.SimpleParams(W_x=jnp.zeros((1, n)), W_h=W_h, b=None, activation="identity")


def test_lyapunov_of_a_symmetric_linear_cell_is_log_sigma():
    sigma = np.array([1.3, 1.0, 0.7, 0.4, 0.1])
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
    params = _linear(Q @ np.diag(sigma) @ Q.T)
    lyap = dynamics.lyapunov_spectrum(cells.simple.cell, params, jnp.zeros((3000, 1)))
    np.testing.assert_allclose(lyap, np.log(sigma), atol=1e-3)
    top2 = dynamics.lyapunov_spectrum(cells.simple.cell, params, jnp.zeros((3000, 1)), k=2)
    np.testing.assert_allclose(top2, np.log(sigma[:2]), atol=1e-3)


def test_lyapunov_of_a_scaled_rotation_is_log_r_twice():
    r, th = 0.8, 0.3
    W = r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lyap = dynamics.lyapunov_spectrum(cells.simple.cell, _linear(W), jnp.zeros((2, 100, 1)))
    np.testing.assert_allclose(lyap, np.full((2, 2), np.log(r)), rtol=1e-12)


def test_lyapunov_of_the_lru_complex_carry_is_log_abs_lambda_twice():
    """The LRU's carry (y real [H], h complex [N]) flattens to S = H + 2N real entries; at zero
    input h_t = λ ⊙ h_{t-1}, so the 2N leading exponents are log|λ_j|, each twice (re, im).
    The first step projects the random frame off the y block (which does not feed back), a
    one-off log(R) of a few units in some columns: an error of 4.5 / T here, hence T = 10,000."""
    params = cells.lru.init(jax.random.key(0), 3, 4, r_min=0.2, r_max=0.9, dtype=jnp.float64)
    log_abs = -np.exp(np.asarray(params.nu_log))  # |λ| = exp(-exp(nu_log))
    N = log_abs.size
    lyap = dynamics.lyapunov_spectrum(cells.lru.cell, params, jnp.zeros((10_000, 3)), k=2 * N)
    assert lyap.shape == (2 * N,)
    np.testing.assert_allclose(lyap, np.sort(np.repeat(log_abs, 2))[::-1], atol=1e-3)


@pytest.mark.parametrize("name", CELLS)
def test_lyapunov_equals_numpy_benettin_on_the_step_jacobians(name):
    """A nonlinear trajectory: the jvp/QR spectrum against NumPy's QR iteration on the
    explicit Jacobians (checked against jacfwd above), from the same initial frame."""
    cell, params, _, S = make(name)
    xs = jax.random.normal(jax.random.key(6), (2, 40, D), jnp.float64)
    h0 = h0_for(name, 2)
    J = np.asarray(dynamics.step_jacobians(cell, params, xs, h0))
    k = S - 1
    lyap = dynamics.lyapunov_spectrum(cell, params, xs, h0, k=k, key=jax.random.key(3))
    Q0, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(3), (S, k), jnp.float64)))
    for b in range(2):
        Q, logs = Q0, np.zeros(k)
        for t in range(40):
            Q, R = np.linalg.qr(J[b, t] @ Q)
            logs += np.log(np.abs(np.diag(R)))
            Q = Q * np.sign(np.diag(R))
        np.testing.assert_allclose(lyap[b], np.sort(logs / 40)[::-1], rtol=1e-9, atol=1e-12)


# --- fixed_points -------------------------------------------------------------------------------


def test_the_origin_of_a_bias_free_tanh_cell_with_eigenvalues_of_w_h():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    W_h = 0.9 * Q @ np.diag([1.0, 0.8, -0.5, 0.3]) @ Q.T @ Q[:, ::-1]  # ||W_h|| <= 0.9: one point
    params = cells.simple.SimpleParams(
        W_x=jnp.asarray(rng.normal(size=(D, 4))), W_h=jnp.asarray(W_h), b=None
    )
    starts = jnp.asarray(rng.normal(size=(6, 4)))
    fp = dynamics.fixed_points(cells.simple.cell, params, jnp.zeros(D), starts)
    assert bool(fp.converged.all()), fp.residuals
    np.testing.assert_allclose(fp.points, 0.0, atol=1e-9)
    eig = np.linalg.eigvals(W_h)
    eig = eig[np.argsort(-np.abs(eig), kind="stable")]
    for row in np.asarray(fp.eigenvalues):  # the same multiset (order of equal moduli aside)
        np.testing.assert_allclose(np.sort_complex(row), np.sort_complex(eig), atol=1e-10)
        np.testing.assert_allclose(np.abs(row), np.abs(eig), atol=1e-10)
    assert len(fp.unique(1e-6).points) == 1


def test_tanh_w_h_has_exactly_three_fixed_points_all_found():
    w = 2.0
    h_star = scipy.optimize.brentq(lambda h: np.tanh(w * h) - h, 0.5, 2.0)
    params = cells.simple.SimpleParams(W_x=jnp.zeros((1, 1)), W_h=jnp.full((1, 1), w), b=None)
    starts = jnp.linspace(-3.0, 3.0, 25)[:, None]
    fp = dynamics.fixed_points(cells.simple.cell, params, jnp.zeros(1), starts)
    u = fp.unique(1e-6)
    found = np.sort(u.points[:, 0])
    np.testing.assert_allclose(found, [-h_star, 0.0, h_star], atol=1e-10)
    # dF/dh = w (1 - h^2): w at the origin (unstable), w (1 - h*^2) < 1 at ±h* (stable)
    eig = {
        round(float(p), 6): complex(e[0])
        for p, e in zip(u.points[:, 0], u.eigenvalues, strict=True)
    }
    np.testing.assert_allclose(eig[0.0], w, atol=1e-10)
    np.testing.assert_allclose(eig[round(h_star, 6)], w * (1 - h_star**2), atol=1e-9)


def test_a_cell_without_a_fixed_point_is_reported_not_converged():
    """F(s) = s + 0.5 + 0.1 tanh(s): F(s) - s >= 0.4 everywhere."""

    def drift(params, carry, x):
        h = carry + 0.5 + 0.1 * jnp.tanh(carry) + 0 * x.sum()
        return h, h

    fp = dynamics.fixed_points(drift, None, jnp.zeros(1), jnp.linspace(-2.0, 2.0, 5)[:, None])
    assert not bool(fp.converged.any()) and not bool(fp.slow.any())
    assert float(fp.residuals.min()) >= 0.5 * 0.4**2 * (1 - 1e-9)
    assert len(fp.unique().points) == 0 and len(fp.unique(converged_only=False).points) == 5


# lstm and gru compile for about 20-30 s here (2 shared cores): slow tier
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("lstm", marks=pytest.mark.slow),
        pytest.param("gru", marks=pytest.mark.slow),
        "pair",
    ],
)
def test_fixed_points_of_any_carry_are_fixed_points_of_the_cell(name):
    """Found points are fixed under the cell itself (the carry unflattened), and their
    eigenvalues are those of jacfwd of one step there."""
    cell, params, _, S = make(name)
    starts = h0_for(name, 4)  # a carry pytree with a leading N axis
    x = jnp.zeros(D)
    fp = dynamics.fixed_points(cell, params, x, starts)
    assert fp.points.shape == (4, S) and fp.eigenvalues.shape == (4, S)
    assert bool(fp.converged.all()), fp.residuals
    like = jax.tree.map(lambda a: a[0], starts)
    for s, e in zip(fp.points, fp.eigenvalues, strict=True):
        carry = unflat(like, s)
        np.testing.assert_allclose(flat(cell(params, carry, x)[0]), s, atol=1e-10)
        step = lambda v: flat(cell(params, unflat(like, v), x)[0])  # noqa: E731
        ref = np.linalg.eigvals(np.asarray(jax.jacfwd(step)(s)))
        np.testing.assert_allclose(np.sort(np.abs(ref))[::-1], np.abs(e), atol=1e-9)
    if name != "pair":  # the same starts given flat
        fp2 = dynamics.fixed_points(cell, params, x, jax.vmap(flat)(starts))
        np.testing.assert_allclose(fp2.points, fp.points, atol=1e-12)
        carry = dynamics.unflatten(cell, params, fp.points)
        np.testing.assert_allclose(flat(jax.tree.map(lambda a: a[0], carry)), fp.points[0])


# --- any cell, jit, unbatched -------------------------------------------------------------------


@pytest.mark.slow  # four functions compiled twice: about 25 s here
def test_functions_jit_and_unbatched_equals_batched_row():
    cell, params, _, _ = make("lstm")
    xs = jax.random.normal(jax.random.key(8), (2, 6, D), jnp.float64)
    loss = lambda c, ys: jnp.sum(c.h)  # noqa: E731
    fns = {
        "J": lambda xs: dynamics.step_jacobians(cell, params, xs),
        "P": lambda xs: dynamics.jacobian_product_norms(cell, params, xs),
        "L": lambda xs: dynamics.lyapunov_spectrum(cell, params, xs, k=3),
        "G": lambda xs: dynamics.carry_grad_norms(loss, cell, params, xs),
    }
    for name, fn in fns.items():
        batched = jax.jit(fn)(xs)
        np.testing.assert_allclose(fn(xs[1]), batched[1], rtol=1e-12, err_msg=name)


# --- errors -------------------------------------------------------------------------------------


def test_errors_name_expected_and_received():
    cell, params, _, _ = make("simple")
    loss = lambda c, ys: jnp.sum(c)  # noqa: E731
    with pytest.raises(ValueError, match=r"\[B, T, D\].*\[T, D\].*rank 1 with shape \(5,\)"):
        dynamics.lyapunov_spectrum(cell, params, jnp.zeros(5))
    with pytest.raises(TypeError, match="floating dtype.*got int32"):
        dynamics.step_jacobians(cell, params, jnp.zeros((2, 5, D), jnp.int32))
    with pytest.raises(ValueError, match=rf"x must have shape \[\.\.\., {D}\].*got shape \(2, 4\)"):
        dynamics.step_jacobians(cell, params, jnp.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=rf"k must be an int in \[1, S={H}\].*got 4"):
        dynamics.lyapunov_spectrum(cell, params, jnp.zeros((5, D)), k=4)
    with pytest.raises(ValueError, match=r"scalar \(shape \(\)\); got shape \(2,\)"):
        dynamics.carry_grad_norms(lambda c, ys: c[:, 0], cell, params, jnp.zeros((2, 5, D)))
    with pytest.raises(ValueError, match=r"batch size 2.*got a leaf of shape \(3, 3\)"):
        dynamics.carry_grad_norms(loss, cell, params, jnp.zeros((2, 5, D)), jnp.zeros((3, H)))
    with pytest.raises(ValueError, match="needs cell.initial_carry, which 'pair_cell' does not"):
        dynamics.jacobian_product_norms(pair_cell, init_pair(jax.random.key(0)), jnp.zeros((5, D)))
    with pytest.raises(ValueError, match=r"x must be one input \[D\].*got shape \(2, 2\)"):
        dynamics.fixed_points(cell, params, jnp.zeros((2, D)), jnp.zeros((4, H)))
    with pytest.raises(ValueError, match=rf"\[N, S\] with S = {H}.*got shape \(4, 5\)"):
        dynamics.fixed_points(cell, params, jnp.zeros(D), jnp.zeros((4, 5)))
    lstm, lp, _, _ = make("lstm")
    with pytest.raises(ValueError, match=rf"S = {2 * H}.*got shape \(4, {H}\)"):
        dynamics.fixed_points(lstm, lp, jnp.zeros(D), jnp.zeros((4, H)))
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 0; got -1"):
        dynamics.fixed_points(cell, params, jnp.zeros(D), jnp.zeros((4, H)), max_steps=-1)


# --- line attractors ----------------------------------------------------------------------------


def test_line_attractor_of_a_hand_built_cell():
    """h' = h A + x W_x with A = u u^T + 0.3 (I - u u^T): at zero input every point c u is
    fixed (eigenvalue 1 along u, 0.3 across); the summary finds the line, the moduli, the
    readout's cosine 1 / sqrt(1 + |n|^2) for readout u + n (n ⊥ u), and an input's push
    along the line, (x W_x) . u."""
    rng = np.random.default_rng(3)
    S, Dx = 4, 3
    u = rng.normal(size=S)
    u /= np.linalg.norm(u)
    A = np.outer(u, u) + 0.3 * (np.eye(S) - np.outer(u, u))
    W_x = rng.normal(size=(Dx, S))
    params = cells.simple.SimpleParams(
        W_x=jnp.asarray(W_x), W_h=jnp.asarray(A), b=None, activation="identity"
    )
    fp = dynamics.fixed_points(
        cells.simple.cell, params, jnp.zeros(Dx), jnp.asarray(2 * rng.normal(size=(12, S)))
    )
    assert bool(fp.converged.all()), fp.residuals
    pts = np.asarray(fp.points)
    np.testing.assert_allclose(pts - np.outer(pts @ u, u), 0.0, atol=1e-9)  # all on the line
    n = rng.normal(size=S)
    n -= (n @ u) * u
    summary = dynamics.line_attractor_summary(fp.points, fp.eigenvalues, jnp.asarray(u + n))
    np.testing.assert_allclose(summary.pc1_share, 1.0, atol=1e-12)
    np.testing.assert_allclose(summary.direction, u, atol=1e-9)
    np.testing.assert_allclose(summary.leading_modulus, 1.0, atol=1e-9)
    np.testing.assert_allclose(summary.second_modulus, 0.3, atol=1e-9)
    np.testing.assert_allclose(summary.readout_cosine, 1 / np.sqrt(1 + n @ n), rtol=1e-9)
    np.testing.assert_allclose(summary.coordinates, (pts - pts.mean(0)) @ u, atol=1e-9)
    words = rng.normal(size=(5, Dx))
    proj = dynamics.input_projections(
        cells.simple.cell, params, fp.points, jnp.asarray(words), summary.direction
    )
    assert proj.shape == (5, 12)
    np.testing.assert_allclose(proj, np.repeat((words @ W_x @ u)[:, None], 12, 1), atol=1e-9)


def test_line_attractor_summary_of_points_off_a_line():
    """Points on a plane: PC1's share is the largest singular value squared over the sum."""
    pts = np.random.default_rng(4).normal(size=(30, 3)) * np.array([3.0, 1.0, 0.0])
    c = pts - pts.mean(0)
    sv = np.linalg.svd(c, compute_uv=False)
    summary = dynamics.line_attractor_summary(jnp.asarray(pts))
    np.testing.assert_allclose(summary.pc1_share, sv[0] ** 2 / np.sum(sv**2), rtol=1e-12)
    assert summary.leading_modulus is None and summary.readout_cosine is None


def test_line_attractor_errors_name_expected_and_received():
    with pytest.raises(ValueError, match=r"\[N, S\] with N >= 2; got shape \(1, 3\)"):
        dynamics.line_attractor_summary(jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"readout must be \[S\] = \[3\].*got shape \(4,\)"):
        dynamics.line_attractor_summary(jnp.ones((5, 3)), readout=jnp.ones(4))
    with pytest.raises(ValueError, match=r"eigenvalues must be \[N, S'\] = \[5, >= 2\].*\(4, 3\)"):
        dynamics.line_attractor_summary(jnp.ones((5, 3)), jnp.ones((4, 3)))
    cell, params, _, _ = make("simple")
    with pytest.raises(ValueError, match=rf"direction must be \[S\] = \[{H}\].*got shape \(2,\)"):
        dynamics.input_projections(cell, params, jnp.zeros((4, H)), jnp.zeros((2, D)), jnp.ones(2))
    with pytest.raises(ValueError, match=r"inputs must be \[M, D\]; got shape \(2,\)"):
        dynamics.input_projections(cell, params, jnp.zeros((4, H)), jnp.zeros(2), jnp.ones(H))


def test_visited_states_are_the_lstm_carries_rnn_returns():
    """``visited_states`` against ``rnn`` run one step longer each time: s_t = (h_t, c_t)."""
    from jaxrnn import rnn

    p = cells.lstm.init(jax.random.key(0), 3, 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
    got = dynamics.visited_states(cells.lstm.cell, p, xs)
    assert got.shape == (2, 5, 8)
    for t in range(5):
        carry, _ = rnn(cells.lstm.cell, p, xs[:, : t + 1], backend="scan")
        want = jnp.concatenate(jax.tree.leaves(carry), axis=-1)
        np.testing.assert_allclose(got[:, t], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        dynamics.visited_states(cells.lstm.cell, p, xs[1]), got[1], rtol=1e-12
    )
