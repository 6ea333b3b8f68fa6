"""Dense linear algebra whose LAPACK calls never carry a batch dimension.

jaxlib 0.10's CPU LAPACK kernels (``getrf``, ``trsm``, ``syevd``, ...) split a batched
call over XLA's intra-op thread pool and block a pool thread until the pieces finish.
When XLA runs as many such calls concurrently as the pool has threads (independent
solves in one program, e.g. an epoch model's pdf and cdf under ``jit`` on a 2-core
machine), every pool thread waits on pieces that no thread is left to run: the
program never completes. An unbatched call runs in place. So every dense factorisation
and solve of the library goes through `sequential_vmap`: under ``vmap`` it maps over the
batch one matrix at a time (``lax.map``), and XLA never sees a batched LAPACK call.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float


def sequential_vmap(fn: Callable) -> Callable:
    """``fn`` (positional pytree arguments; every traced value it uses must be one of
    them: the rule may be traced again later, e.g. by ``custom_linear_solve``'s batching,
    where a closed-over tracer would be stale) with a ``vmap`` rule that evaluates it one
    batch element at a time: the batched leaves are scanned by ``lax.map``, the others
    closed over. Forward-mode derivatives pass through; use it under
    ``custom_linear_solve``, ``custom_jvp`` or ``stop_gradient`` where reverse mode is
    needed."""

    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        leaves, tree = jax.tree.flatten(args)
        flags = jax.tree.leaves(in_batched)
        if not any(flags):  # e.g. jacfwd: only the tangents are batched
            out = fn(*args)
            return out, jax.tree.map(lambda _: False, out)

        def one(batched):
            it = iter(batched)
            return wrapped(
                *jax.tree.unflatten(tree, [next(it) if b else x for x, b in zip(leaves, flags)])
            )

        out = jax.lax.map(one, [x for x, b in zip(leaves, flags) if b])
        return out, jax.tree.map(lambda _: True, out)

    return wrapped


lu_factor = sequential_vmap(jsl.lu_factor)
_lu_solve = tuple(
    sequential_vmap(lambda lu, piv, b, trans=trans: jsl.lu_solve((lu, piv), b, trans=trans))
    for trans in (0, 1)
)
_eigh = sequential_vmap(jnp.linalg.eigh)


@jax.custom_jvp
def eigvalsh(a: Float[Array, "n n"]) -> Float[Array, " n"]:
    """Eigenvalues of a symmetric matrix, ascending (as ``jnp.linalg.eigvalsh``); first
    derivatives ``dw_i = v_i^T da v_i`` in both modes."""
    return _eigh(a)[0]


@eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _eigh(a)
    return w, jnp.real(jnp.einsum("ji,jk,ki->i", v.conj(), da, v))


def lu_solve(factors: tuple[Array, Array], b: Array, transpose: bool = False) -> Array:
    """``A^{-1} b`` (``A^{-T} b``) from ``factors = lu_factor(A)``; ``b`` is (n,) or (n, m)."""
    return _lu_solve[int(transpose)](*factors, b)


def solve(a: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    """``a^{-1} b`` (as ``jnp.linalg.solve``: in their common dtype), differentiable to any
    order.

    One LU factorisation of ``a`` (held constant under differentiation) serves the solve
    and every derivative: ``jax.lax.custom_linear_solve`` differentiates implicitly,
    ``d x = a^{-1}(d b - d a x)``, and reverse mode solves with ``a^T``.
    """
    dtype = jnp.result_type(a, b)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    factors = lu_factor(jax.lax.stop_gradient(a))
    return jax.lax.custom_linear_solve(
        lambda x: a @ x,
        b,
        lambda _, y: lu_solve(factors, y),
        lambda _, y: lu_solve(factors, y, transpose=True),
    )


def inv(a: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """``a^{-1}`` (`solve` of the identity)."""
    return solve(a, jnp.eye(a.shape[0], dtype=a.dtype))
