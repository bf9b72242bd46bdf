"""The mechanism that gives a kernel every transformation (jaxrnn.backends._linear).

A stand-in kernel that JAX cannot differentiate at all (NumPy through ``jax.pure_callback``,
forward and backward) is wrapped with ``differentiable``; every transformation of it must
equal the same transformation of its plain JAX reference, and reverse mode must run the
stand-in's own backward (its callback), not the reference's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

from jaxrnn.backends import _linear


def np_forward(U, W, h0):
    S = [h0]
    for t in range(U.shape[0]):
        S.append(np.tanh(U[t] + S[-1] @ W))
    return np.stack(S[1:])


def np_backward(S, W, h0, g):  # g: cotangent of S [T, B, H]
    D = np.zeros_like(g)
    carry = np.zeros_like(g[0])
    for t in range(g.shape[0] - 1, -1, -1):
        D[t] = (g[t] + carry) * (1 - S[t] ** 2)
        carry = D[t] @ W.T
    prev = np.concatenate([h0[None], S[:-1]])
    return D, np.einsum("tbi,tbj->ij", prev, D), carry


def reference(U, W, h0):
    def step(h, u):
        h = jnp.tanh(u + h @ W)
        return h, h

    return jax.lax.scan(step, h0, U)[1]


CALLS = {"backward": 0}


def forward(U, W, h0):
    out = jax.ShapeDtypeStruct(U.shape, U.dtype)
    return jax.pure_callback(np_forward, out, U, W, h0, vmap_method="sequential"), ()


def backward(args, S, private, g):
    U, W, h0 = args
    CALLS["backward"] += 1
    out = (jax.ShapeDtypeStruct(U.shape, U.dtype), jax.ShapeDtypeStruct(W.shape, W.dtype),
           jax.ShapeDtypeStruct(h0.shape, h0.dtype))  # fmt: skip
    return jax.pure_callback(np_backward, out, S, W, h0, g, vmap_method="sequential")


kernel = _linear.differentiable(forward, backward, reference, "stand_in")


def fast(U, W, h0):
    return kernel(U, W, h0)[0]


def loss(f):
    def loss(U, W, h0):
        S = f(U, W, h0)
        return jnp.sum(jnp.sin(S)) + jnp.sum(S[-1] ** 2)

    return loss


TRANSFORMS = {
    "value": lambda f: f,
    "grad": lambda f: jax.grad(loss(f), argnums=(0, 1, 2)),
    "jit-grad": lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1, 2))),
    "jvp": lambda f: lambda *a: jax.jvp(f, a, tuple(0.3 * jnp.ones_like(x) for x in a)),
    "jacfwd": lambda f: jax.jacfwd(loss(f), argnums=1),
    "jacrev": lambda f: jax.jacrev(f, argnums=1),
    "hessian": lambda f: jax.hessian(loss(f), argnums=1),
    "grad-of-grad": lambda f: jax.grad(
        lambda *a: jnp.sum(jax.grad(loss(f), argnums=1)(*a) ** 2), argnums=(0, 1, 2)
    ),
    "jvp-of-grad": lambda f: (
        lambda *a: jax.jvp(jax.grad(loss(f), argnums=1), a, tuple(jnp.ones_like(x) for x in a))
    ),
    "linearize": lambda f: lambda *a: jax.linearize(f, *a)[1](*(jnp.ones_like(x) for x in a)),
    "vmap": lambda f: jax.vmap(f, in_axes=(1, None, 0)),
    "vmap-grad": lambda f: jax.vmap(jax.grad(loss(f), argnums=(0, 1, 2)), in_axes=(1, None, 0)),
    "grad-of-vmap": lambda f: jax.grad(
        lambda *a: jnp.sum(jax.vmap(f, in_axes=(1, None, 0))(*a) ** 2), argnums=(0, 1, 2)
    ),
    "checkpoint-grad": lambda f: jax.grad(loss(jax.checkpoint(f)), argnums=(0, 1, 2)),
    "vmap-hessian": lambda f: jax.vmap(jax.hessian(loss(f), argnums=2), in_axes=(1, None, 0)),
}


# vmap of hessian in the slow tier (~10 s): hessian and the vmaps of grad cover its rules
@pytest.mark.parametrize(
    "transform",
    [pytest.param(t, marks=pytest.mark.slow) if t == "vmap-hessian" else t for t in TRANSFORMS],
)
def test_every_transformation_of_a_stand_in_kernel_equals_its_reference(transform):
    rng = np.random.default_rng(0)
    T, B, H = 6, 3, 4
    U = jnp.asarray(0.5 * rng.standard_normal((T, B, H)))
    W = jnp.asarray(0.5 * rng.standard_normal((H, H)))
    h0 = jnp.asarray(0.5 * rng.standard_normal((B, H)))
    args = (U, W, h0)
    if "vmap" in transform:  # a batch of [T, 1, H] problems
        args = (U[:, :, None, :], W, h0[:, None, :])
    assert_trees_close(
        TRANSFORMS[transform](fast)(*args), TRANSFORMS[transform](reference)(*args),
        rtol=1e-9, atol=1e-10,
    )  # fmt: skip


def test_reverse_mode_runs_the_stand_ins_backward_and_no_tangent_loop():
    U, W, h0 = jnp.ones((5, 2, 3)) * 0.1, jnp.eye(3) * 0.5, jnp.zeros((2, 3))
    CALLS["backward"] = 0
    text = jax.jit(jax.grad(loss(fast), argnums=(0, 1, 2))).lower(U, W, h0).as_text()
    assert CALLS["backward"] >= 1  # the stand-in's backward was traced
    assert text.count("callback") == 2  # its forward and backward; no reference loop
    assert "while" not in text
