"""A linear map with its own transpose, as a JAX primitive: how the kernels get every transform.

A backend's forward pass is a ``jax.custom_jvp`` function whose tangent is
``linear(op, res, tangents)``: ``op.fun(res, lin)`` is linear in ``lin`` (the tangent
recurrence), ``op.transpose(res, cts)`` is its transpose (the backend's backward pass).
JAX's reverse mode linearises the JVP and transposes it, so ``jax.grad`` runs
``op.transpose`` (the hand-written BPTT, a kernel) and forward mode runs ``op.fun``.

Rules of the primitive:

* transpose: the same primitive with ``fun`` and ``transpose`` swapped; cotangents that are
  symbolic zeros reach ``transpose`` as ``None`` (a backward that reads no ``[T, B, H]``
  cotangent when only the final carry is used);
* JVP: linear in ``lin``, so the tangent along ``lin`` is the primitive again; along ``res``
  it is the JVP of ``op.fun_ref`` (a differentiable formulation of ``fun``), which is how
  second derivatives (``hessian``, grad of grad) reach through a kernel's backward pass;
* batching: each function ``jax.vmap``-ed, unbatched linear inputs broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

Fn = Callable[[list[Any], list[Any]], list[Any]]


class LinearOp:
    """``fun(res, lin) -> outs``, linear in ``lin``, and its transpose.

    Args:
        fun: ``(res, lin) -> outs``, lists of arrays.
        transpose: ``(res, cts) -> lins``; an entry of ``cts`` is ``None`` for a zero
            cotangent.
        fun_ref, transpose_ref: the same maps in differentiable JAX (for derivatives along
            ``res``); ``transpose_ref`` gets zeros, never ``None``.
        out_avals, lin_avals: shapes and dtypes (anything with ``.shape``, ``.dtype``) of
            the outputs and the linear inputs.
    """

    def __init__(
        self, fun: Fn, transpose: Fn, fun_ref: Fn, transpose_ref: Fn,
        out_avals: Sequence[Any], lin_avals: Sequence[Any],
    ):  # fmt: skip
        self.fun, self.transpose = fun, transpose
        self.fun_ref, self.transpose_ref = fun_ref, transpose_ref
        self.out_avals = tuple(jax.core.ShapedArray(a.shape, a.dtype) for a in out_avals)
        self.lin_avals = tuple(jax.core.ShapedArray(a.shape, a.dtype) for a in lin_avals)

    def transposed(self, present: Sequence[bool]) -> LinearOp:
        """The transpose, for cotangents given where ``present`` (the others are zero)."""
        present = tuple(present)

        def expand(cts):
            it = iter(cts)
            return [next(it) if p else None for p in present]

        def zeros_for_none(xs, avals):
            return [
                jnp.zeros(a.shape, a.dtype) if x is None else x
                for x, a in zip(xs, avals, strict=True)
            ]

        def keep(outs):
            return [o for o, p in zip(outs, present, strict=True) if p]

        return LinearOp(
            lambda res, cts: self.transpose(res, expand(cts)),
            lambda res, lins: keep(self.fun(res, zeros_for_none(lins, self.lin_avals))),
            lambda res, cts: self.transpose_ref(res, zeros_for_none(expand(cts), self.out_avals)),
            lambda res, lins: keep(self.fun_ref(res, zeros_for_none(lins, self.lin_avals))),
            self.lin_avals,
            keep(self.out_avals),
        )

    def batched(self, res_dims: Sequence[int | None], size: int) -> LinearOp:
        """Every function vmapped: ``res`` along ``res_dims``, linear inputs and outputs
        along a new leading axis of ``size``."""
        res_dims = list(res_dims)

        def vm(f: Fn) -> Fn:
            return jax.vmap(f, in_axes=(res_dims, 0))

        def vm_none(f: Fn) -> Fn:  # the cotangents given as None stay None inside
            def g(res, cts):
                given = [i for i, c in enumerate(cts) if c is not None]

                def one(r, present):
                    full = [None] * len(cts)
                    for i, c in zip(given, present, strict=True):
                        full[i] = c
                    return f(r, full)

                return jax.vmap(one, in_axes=(res_dims, 0))(res, [cts[i] for i in given])

            return g

        def lead(avals):
            return [jax.core.ShapedArray((size, *a.shape), a.dtype) for a in avals]

        return LinearOp(
            vm(self.fun), vm_none(self.transpose), vm(self.fun_ref), vm(self.transpose_ref),
            lead(self.out_avals), lead(self.lin_avals),
        )  # fmt: skip


linear_p = jcore.Primitive("jaxrnn_linear")
linear_p.multiple_results = True


def linear(op: LinearOp, res: Sequence[Any], lin: Sequence[Any]) -> list[Any]:
    """``op.fun(res, lin)`` as one primitive (see the module docstring)."""
    return linear_p.bind(*res, *lin, op=op, n_res=len(res))


def _impl(*args, op: LinearOp, n_res: int):
    return op.fun(list(args[:n_res]), list(args[n_res:]))


def _abstract_eval(*args, op: LinearOp, n_res: int):
    return list(op.out_avals)


def _jvp(primals, tangents, *, op: LinearOp, n_res: int):
    res, lin = list(primals[:n_res]), list(primals[n_res:])
    dres, dlin = tangents[:n_res], tangents[n_res:]
    out = linear_p.bind(*primals, op=op, n_res=n_res)
    parts = []
    if not all(type(t) is ad.Zero for t in dlin):
        parts.append(linear_p.bind(*res, *map(ad.instantiate_zeros, dlin), op=op, n_res=n_res))
    if not all(type(t) is ad.Zero for t in dres):
        dres = list(map(ad.instantiate_zeros, dres))
        parts.append(jax.jvp(lambda *r: op.fun_ref(list(r), lin), res, dres)[1])
    if not parts:
        return out, [ad.Zero(a.to_tangent_aval()) for a in op.out_avals]
    return out, [sum(ts[1:], ts[0]) for ts in zip(*parts, strict=True)]


def _transpose(cts, *args, op: LinearOp, n_res: int):
    res, lin = args[:n_res], args[n_res:]
    if any(ad.is_undefined_primal(r) for r in res):
        raise NotImplementedError("jaxrnn: a kernel's residuals cannot be transposed")
    present = [type(c) is not ad.Zero for c in cts]
    if not any(present):
        return [None] * len(args)
    given = [c for c in cts if type(c) is not ad.Zero]
    outs = linear_p.bind(*res, *given, op=op.transposed(present), n_res=n_res)
    return [None] * n_res + [
        o if ad.is_undefined_primal(x) else None for o, x in zip(outs, lin, strict=True)
    ]


def _batch(args, dims, *, op: LinearOp, n_res: int):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    res = [
        a if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args[:n_res], dims[:n_res], strict=True)
    ]
    lin = [
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args[n_res:], dims[n_res:], strict=True)
    ]
    res_dims = [None if d is None else 0 for d in dims[:n_res]]
    out = linear_p.bind(*res, *lin, op=op.batched(res_dims, size), n_res=n_res)
    return out, [0] * len(out)


linear_p.def_impl(_impl)
linear_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[linear_p] = _jvp
ad.primitive_transposes[linear_p] = _transpose
batching.primitive_batchers[linear_p] = _batch
mlir.register_lowering(linear_p, mlir.lower_fun(_impl, multiple_results=True))


def differentiable(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[tuple, Any, Any, Any], tuple],
    reference: Callable[..., Any],
    name: str = "jaxrnn_kernel",
) -> Callable[..., tuple[Any, Any]]:
    """A function computed by ``forward`` that every JAX transformation sees as ``reference``.

    Args:
        forward: ``(*args) -> (outs, private)``: the fast computation (e.g. a kernel) and what
            its backward pass needs besides the arguments and outputs (its saved buffers).
        backward: ``(args, outs, private, cts) -> cotangents of args``: the fast VJP; ``cts``
            is a pytree like ``outs`` whose leaves are ``None`` where the cotangent is zero;
            it returns ``None`` for integer arguments.
        reference: ``(*args) -> outs``: the same function in differentiable JAX.
        name: the function's name in jaxprs.

    Returns:
        ``f(*args) -> (outs, private)``. Reverse mode runs ``backward``; forward mode, and
        derivatives of ``backward`` itself, differentiate ``reference``.
    """

    def f(*args):
        return forward(*args)

    f.__name__ = f.__qualname__ = name
    f = jax.custom_jvp(f)

    @f.defjvp
    def f_jvp(primals, tangents):
        outs, private = f(*primals)
        diff = [jnp.issubdtype(jnp.result_type(a), jnp.inexact) for a in jax.tree.leaves(primals)]
        args_tree = jax.tree.structure(primals)
        out_tree = jax.tree.structure(outs)
        n_args, n_outs = args_tree.num_leaves, out_tree.num_leaves
        res = [*jax.tree.leaves(primals), *jax.tree.leaves(outs), *jax.tree.leaves(private)]
        private_tree = jax.tree.structure(private)

        def unpack(res):
            args = jax.tree.unflatten(args_tree, res[:n_args])
            outs_ = jax.tree.unflatten(out_tree, res[n_args : n_args + n_outs])
            return args, outs_, jax.tree.unflatten(private_tree, res[n_args + n_outs :])

        def full_tangents(args, lin):  # float0 zeros for the integer arguments
            it = iter(lin)
            leaves = jax.tree.leaves(args)
            return jax.tree.unflatten(
                args_tree,
                [next(it) if d else np.zeros(np.shape(a), jax.dtypes.float0) for a, d in zip(leaves, diff, strict=True)],
            )  # fmt: skip

        def fun(res, lin):
            args, _, _ = unpack(res)
            return jax.tree.leaves(jax.jvp(reference, args, full_tangents(args, lin))[1])

        def transpose(res, cts):
            args, outs_, private_ = unpack(res)
            g = backward(args, outs_, private_, jax.tree.unflatten(out_tree, cts))
            return [x for x, d in zip(args_tree.flatten_up_to(g), diff, strict=True) if d]

        def transpose_ref(res, cts):
            args, _, _ = unpack(res)
            g = jax.vjp(reference, *args)[1](jax.tree.unflatten(out_tree, cts))
            return [x for x, d in zip(args_tree.flatten_up_to(g), diff, strict=True) if d]

        lin = [t for t, d in zip(jax.tree.leaves(tangents), diff, strict=True) if d]
        op = LinearOp(fun, transpose, fun, transpose_ref, jax.tree.leaves(outs), lin)
        d_outs = jax.tree.unflatten(out_tree, linear(op, res, lin))
        return (outs, private), (d_outs, jax.tree.map(_zero_tangent, private))

    return f


def _zero_tangent(x: Any) -> Any:
    """A zero tangent for a private buffer (nothing differentiates along it)."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)
