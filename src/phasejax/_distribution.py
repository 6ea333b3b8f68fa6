"""Phase-type distributions with traced rates: every quantity as pure JAX.

Notation: ``n`` transient states, initial vector ``alpha``, ``M = -S`` (continuous)
or ``M = I - T`` (discrete), ``U = M^{-1}``, rewards ``r >= 0`` per state,
``R = diag(r)``. A continuous reward is accumulated per unit of time
(``Y = int r(X_t) dt``), a discrete one per visit (``Y = sum_k r(X_k)``).

- Expected accumulated reward from each state: ``x = U r``; ``E[Y] = alpha . x``.
- Expected time in (visits to) each state: ``z = U^T alpha`` (one transposed solve).
- Continuous moments: ``m_0 = 1``, ``m_k = k U (r * m_{k-1})``, ``E[Y^k] = alpha . m_k``.
- Discrete moments (first-step analysis ``Y = r_i + Y'``):
  ``M m_k = r^k + sum_{j=1}^{k-1} C(k, j) r^{k-j} * (T m_j)``.
- Cross moments: ``E[Y_a Y_b] = (z * r_a) . U r_b + (z * r_b) . U r_a``, minus
  ``z . (r_a * r_b)`` in the discrete case (a visit counted in both sums).

Every method is differentiable in the rates (implicit differentiation of the solves)
and follows the dtype of the rates.
"""

from __future__ import annotations

import abc
import functools
import inspect
import warnings
from math import comb, factorial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _expm, _sparse, _tangents
from . import _uniformization as _unif
from ._lumping import Lumping
from ._sample import sample_paths
from ._solve import LinearRates, System, solve
from ._structure import CheckedRewards, Structure, check_rewards, is_traced

DEFAULT_TOL = 1e-12
# discrete quantities whose series window ends at step k - 1 (the rest end at k)
_ENDS_BEFORE_K = ("pmf", "cdf", "visits")
DEFAULT_MAX_STEPS = None  # no cap: the series runs as long as the data need
# XLA CPU's classic loop emitter compiles each fused kernel about twice as fast as its
# newer fusion emitters, and its code runs 5-30 % slower (measured on the transient
# kernels, chains of 9-29 states): used for transient kernels of chains of at most 32
# states, and only as top-level programs (JAX takes compiler options from one only;
# programs inside the user's jit keep the defaults). Options of one executable
# (part of the persistent cache's key), not global flags; other backends ignore them.
LATENCY_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def _jit_checking_rewards(method):
    """``eqx.filter_jit`` of ``method``, with concrete ``rewards`` checked in Python first
    (`check_rewards`, naming the bad entry) and passed as [`CheckedRewards`][]: the
    compiled program then carries no error callback for them, so JAX's persistent
    compilation cache can keep it. Traced rewards are checked inside, as before."""
    jitted = eqx.filter_jit(method)
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        rewards = bound.arguments.get("rewards")
        if rewards is not None and not isinstance(rewards, CheckedRewards):
            if not is_traced(rewards):
                bound.arguments["rewards"] = CheckedRewards(jnp.asarray(check_rewards(rewards)))
        return jitted(*bound.args, **bound.kwargs)

    return wrapper


class AbstractPhaseType(eqx.Module):
    """Shared machinery of [`PhaseType`][phasejax.PhaseType] and [`DiscretePhaseType`][phasejax.DiscretePhaseType].

    Rewards are given per vertex in ``graph.states()`` order (the starting vertex
    first); the starting and absorbing vertices accumulate nothing, so their entries
    are ignored. ``rewards=None`` means 1 in every state (the absorption time).
    """

    structure: Structure
    _rate: Float[Array, " e"] | None
    diag: Float[Array, " n"]
    alpha: Float[Array, " n"]
    linear: LinearRates | None = None
    lumping: Lumping | None = None

    def __init__(
        self,
        structure: Structure,
        rate: Float[Array, " e"] | None,
        diag: Float[Array, " n"],
        alpha: Float[Array, " n"],
        linear: LinearRates | None = None,
        lumping: Lumping | None = None,
    ):
        """``rate``: the transient edges' rates, or ``None`` with ``linear`` (`LinearRates`,
        as ``model(theta)`` builds for linear rate functions), from which they are formed
        where needed (one source: the rates cannot disagree with it).

        ``lumping`` (with ``linear``; `phasejax._lumping.Lumping`, as ``model(theta)``
        passes for a continuous model whose states lump): the absorption time's
        densities and probabilities are then computed on the lumped chain, exactly."""
        if (rate is None) == (linear is None):
            raise ValueError("give exactly one of `rate` and `linear`")
        if lumping is not None and linear is None:
            raise ValueError("`lumping` needs the rates as `linear`")
        self.structure, self._rate, self.diag, self.alpha, self.linear, self.lumping = (
            structure,
            rate,
            diag,
            alpha,
            linear,
            lumping,
        )

    @property
    def rate(self) -> Float[Array, " e"]:
        """The transient edges' rates (``structure.src -> structure.dst``)."""
        if self.linear is not None:
            return self.linear.rates()
        assert self._rate is not None  # exactly one of them (__init__)
        return self._rate

    @property
    def system(self) -> System:
        return System(self.structure.src, self.structure.dst, self.rate, self.diag, self.linear)

    def _solver(self, system: System | None = None):
        """``solve(rhs, transpose=False)`` for ``system`` (default: this model's ``M``)."""
        system = self.system if system is None else system
        state = self.structure.solver.prepare(system)
        return lambda rhs, transpose=False: solve(
            self.structure.solver, system, state, rhs, transpose
        )

    def _rewards(self, rewards: ArrayLike | CheckedRewards | None) -> Float[Array, " n ..."]:
        if rewards is None:
            return jnp.ones_like(self.diag)
        checked = isinstance(rewards, CheckedRewards)
        values = jnp.asarray(rewards.values if checked else rewards, self.diag.dtype)
        return self.structure.from_vertices(
            jnp.moveaxis(values, -1, 0), self.diag.dtype, checked=checked
        )

    @property
    def exit(self) -> Float[Array, " n"]:
        """Exit rate (continuous) or exit probability (discrete) of each transient state."""
        m = self.structure
        return _sparse.absorption_sums(self.rate, m.src, m.dst, m.n_transient)

    def _mix(
        self,
        proj,
        lam,
        mu,
        lo,
        hi,
        *,
        poisson,
        cumulative=False,
        order=0,
        offset: Array | float = 0.0,
        key: Array | None = None,
        presorted: bool = False,
    ):
        """``log`` of the windowed series mixture per observation, shape ``(t, q)``
        (`phasejax._uniformization.mix`; ``proj=None``: every state)."""
        m = self.structure
        q = m.n_transient if proj is None else proj.shape[1]
        stream = _unif.make_stream(
            m.n_transient,
            q,
            mu.shape[0],
            poisson=poisson,
            cumulative=cumulative,
            order=order,
            identity=proj is None,
        )
        lam = jax.lax.stop_gradient(jnp.asarray(lam, self.diag.dtype))
        args = (self.rate, self.diag, proj, self.alpha, m.src, m.dst, lam, mu, lo, hi, offset)
        return _unif.mix(stream, *args, key=key, presorted=presorted)

    @_jit_checking_rewards
    def sample(
        self,
        key,
        shape: tuple[int, ...] = (),
        rewards: ArrayLike | None = None,
        *,
        max_jumps: int | None = None,
    ) -> Array:
        """Draw absorption times (``rewards=None``), accumulated rewards (``(V,)``), or
        a multivariate reward vector per draw (``(m, V)`` -> output ``shape + (m,)``).

        Exact simulation of the jump chain (see `phasejax._sample.sample_paths`);
        ``max_jumps`` (optional) raises for a path that has not absorbed after that many
        jumps (every path absorbs with probability 1: the model is checked at compile time).
        """
        r = self._rewards(rewards)
        out = sample_paths(
            key,
            tuple(shape),
            self.structure.out_edges,
            self.structure.dst,
            self.rate,
            self.diag,
            self.alpha,
            r.reshape(r.shape[0], -1),
            self.structure.discrete,
            max_jumps,
        )
        return out[..., 0] if r.ndim == 1 else out

    def reward_transform(self, rewards: ArrayLike, positive=None) -> AbstractPhaseType:
        """The distribution of the accumulated reward as a phase-type distribution.

        Continuous: ``Y = int r(X_t) dt`` (zero rewards allowed; ``positive``, a static
        boolean mask per vertex, is needed when ``rewards`` are traced). Discrete:
        ``Y = sum_k r(X_k)`` for concrete non-negative integer rewards. Zero-reward
        states are eliminated and their transitions folded into their neighbours
        (see `phasejax._rewards`).
        """
        from ._rewards import reward_transform  # upward convenience: _rewards builds on this module

        return reward_transform(self, rewards, positive)

    def defect(self) -> Float[Array, ""]:
        """Probability of absorption at time 0 (``1 - sum(alpha)``)."""
        return 1.0 - jnp.sum(self.alpha)

    @_jit_checking_rewards
    def expected_waiting_time(self, rewards: ArrayLike | None = None) -> Float[Array, " V"]:
        """Expected reward accumulated until absorption from each vertex: ``U r``.

        Entry 0 (the starting vertex) holds ``E[Y] = alpha . U r``; absorbing vertices 0.
        """
        x = self._solver()(self._rewards(rewards))
        return self.structure.to_vertices(x, start=self.alpha @ x)

    @_jit_checking_rewards
    def mean(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``E[Y] = alpha U r``."""
        return self.moments(1, rewards)[0]

    @eqx.filter_jit
    def expected_sojourn(self) -> Float[Array, " V"]:
        """Expected time in (continuous) or number of visits to (discrete) each vertex: ``alpha U``."""
        return self.structure.to_vertices(self._solver()(self.alpha, transpose=True))

    @abc.abstractmethod
    def _moment_rhs(self, r, ms, rhss, k):
        """Right-hand side of ``M m_k = ...`` given lower ``m_j`` and their right-hand sides."""

    def _moment_vectors(self, k: int, rewards):
        r = self._rewards(rewards)
        solve_ = self._solver()
        ms, rhss = [jnp.ones_like(r)], [None]
        for order in range(1, k + 1):
            rhs = self._moment_rhs(r, ms, rhss, order)
            ms.append(solve_(rhs))
            rhss.append(rhs)
        return ms[1:]

    @abc.abstractmethod
    def _time_scale(self) -> Float[Array, ""]:
        """A rate scale ``c`` (1 for discrete): moments are computed for the chain with
        rates ``/ c`` and rescaled by ``c^-k`` at the end, so a moment beyond float range
        comes out ``inf`` (never ``inf - inf = NaN``); exact, hence under ``stop_gradient``."""

    def _rescaled(self) -> tuple[AbstractPhaseType, Float[Array, ""]]:
        c = jax.lax.stop_gradient(self._time_scale())
        if self.linear is not None:
            return type(self)(
                self.structure, None, self.diag / c, self.alpha, self.linear.scaled(1 / c)
            ), c
        return type(self)(self.structure, self.rate / c, self.diag / c, self.alpha), c

    @staticmethod
    def _unscale(x: Array, c: Array, power: int) -> Array:
        """``x / c^power``, with ``0`` kept exact when ``c^power`` underflows."""
        return jnp.where(x == 0, 0.0, x / c**power)

    @_jit_checking_rewards
    def moments(self, k: int, rewards: ArrayLike | None = None) -> Float[Array, " k"]:
        """Raw moments ``E[Y], E[Y^2], ..., E[Y^k]`` (``k`` solves)."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scaled, c = self._rescaled()
        ms = scaled._moment_vectors(int(k), rewards)
        return jnp.stack([self._unscale(self.alpha @ m, c, j + 1) for j, m in enumerate(ms)])

    @_jit_checking_rewards
    def var(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``Var[Y] = E[Y^2] - E[Y]^2``."""
        scaled, c = self._rescaled()
        m1, m2 = (self.alpha @ m for m in scaled._moment_vectors(2, rewards))
        return self._unscale(m2 - m1**2, c, 2)

    @_jit_checking_rewards
    def covariance_matrix(self, rewards: ArrayLike) -> Float[Array, "m m"]:
        """Covariance matrix of ``Y_a`` for a reward matrix of shape (m, V) (e.g. the SFS).

        ``m + 1`` solves: ``X = U R^T`` and ``z = U^T alpha``.
        """
        scaled, c = self._rescaled()
        r = scaled._rewards(rewards)  # (n, m)
        solve_ = scaled._solver()
        x = solve_(r)
        z = solve_(self.alpha, transpose=True)
        cross = (z[:, None] * r).T @ x
        second = cross + cross.T - scaled._visit_correction(z, r)
        means = self.alpha @ x
        return self._unscale(second - jnp.outer(means, means), c, 2)

    @abc.abstractmethod
    def _visit_correction(self, z, r) -> Array | float:
        """Second-moment term of a visit counted in both sums (discrete only; else 0)."""

    @eqx.filter_jit
    def cov(self, rewards1: ArrayLike, rewards2: ArrayLike) -> Float[Array, ""]:
        """``Cov[Y_1, Y_2]`` for two reward vectors."""
        return self.covariance_matrix(jnp.stack([jnp.asarray(rewards1), jnp.asarray(rewards2)]))[
            0, 1
        ]


class PhaseType(AbstractPhaseType):
    """Continuous phase-type distribution ``PH(alpha, S)`` with traced rates."""

    def _moment_rhs(self, r, ms, rhss, k):
        return k * r * ms[k - 1]

    def _visit_correction(self, z, r):
        return 0.0

    def _time_scale(self):
        top = jnp.max(self.diag)
        return jnp.where(top > 0, top, 1.0)

    def reward_scaled(self, rewards: ArrayLike) -> PhaseType:
        """The distribution of ``Y = int r(X_t) dt`` for strictly positive rewards.

        Time runs at speed ``1 / r_i`` in state ``i``: rates of state ``i`` are divided
        by ``r_i`` (``S' = R^{-1} S``). Zero rewards need ``reward_transform``.
        """
        r = self._rewards(rewards)
        r = eqx.error_if(
            r, jnp.any(r <= 0), "reward_scaled needs strictly positive rewards on transient states"
        )
        return PhaseType(
            self.structure, self.rate / r[self.structure.src], self.diag / r, self.alpha
        )

    def _lumped(self) -> PhaseType:
        """The same distribution of the absorption time on the lumped chain (`lumping`):
        ``alpha`` summed over each block, the lumped rates at this ``theta`` and scale."""
        lumping, linear = self.lumping, self.linear
        assert lumping is not None and linear is not None  # (__init__)
        lumped = lumping.rates(linear.theta, linear.scale)
        alpha = _sparse.segment_sum(self.alpha, lumping.block, lumping.n_blocks)
        # zero, but it carries ``diag`` into the lumped chain: under jit, model(theta)'s
        # admissibility checks hang on ``diag`` and would otherwise be dropped as unused
        carried = 0.0 * _sparse.segment_sum(self.diag, lumping.block, lumping.n_blocks)
        return PhaseType(lumping.structure, None, lumped.totals() + carried, alpha, lumped)

    def _transient(
        self,
        t,
        kind: str,
        tol: float,
        max_steps: int | None,
        order: int = 0,
        method: str = "auto",
    ):
        """Validate concrete inputs in Python (so that the compiled kernel carries no host
        callback and is cacheable), choose the method, then run `_transient_kernel`.

        ``method``: ``"uniformization"``, ``"expm"`` or ``"auto"``
        (`phasejax._expm.choose`). Quantities of the absorption time alone (``kind``
        ``"logpdf"``, ``"sf"``, ``"cdf"``, ``"integral"``) run on the lumped chain when
        the model lumps (`_lumped`, formed inside the compiled kernel)."""
        lump = self.lumping is not None and kind in ("logpdf", "sf", "cdf", "integral")
        structure = self.lumping.structure if self.lumping is not None and lump else self.structure
        tol = _unif.check_tol(tol)
        # concrete data stays concrete under an outer jit only before jnp.asarray
        checked = _unif.is_concrete(t)
        values = _unif.check_times(np.asarray(t, self.diag.dtype)) if checked else None
        t = jnp.asarray(t, self.diag.dtype)
        if self.diag.dtype == jnp.float32:
            warnings.warn(
                "float32 transient quantities: cdf/sf are clipped to [0, 1] with absolute "
                "error up to about 1e-5 (pdf relative error about 1e-5); a cdf evaluated at "
                "nearby times may decrease by that much. Use float64 (jax_enable_x64) for "
                "1e-10 accuracy.",
                stacklevel=3,
            )
        mu = None  # Lambda t per time, when concrete and needed (a method or cap to pick)
        if values is not None:
            finite = np.where(np.isinf(values), 0.0, values)  # t = inf runs as t = 0
            needed = method != "uniformization" or max_steps is not None
            if needed and _unif.is_concrete(self.diag, self.linear):
                diag = np.asarray(self.diag)
                if lump:  # the lumped chain's total out-rates (at most the full chain's)
                    lumping, linear = self.lumping, self.linear
                    assert lumping is not None and linear is not None
                    theta, scale = np.asarray(linear.theta), np.asarray(linear.scale)
                    diag = lumping.rates(theta, scale, np).totals()
                mu = float(np.max(diag, initial=0.0)) * finite
        n = structure.n_transient
        method = _expm.choose(method, kind, n, structure.src.shape[0], mu, tol)
        plan = None
        if method == "expm":
            mu_max = None if mu is None else float(np.max(mu, initial=0.0))
            plan = _expm.make_plan(kind, n, max(1, int(np.size(t))), mu_max)
        elif mu is not None and values is not None and max_steps is not None:
            _unif.check_cap(_unif.right_point(mu, tol, np), max_steps, values, "time")
            max_steps = None  # checked: nothing left to check in the kernel
        inverse = None
        if values is not None and plan is None:
            # sorted on the host: the executable then carries no sort of the times (each
            # small op around the series is a kernel of its own, compiled on first call)
            perm = np.argsort(np.ravel(finite), kind="stable")
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(perm.size)
            t, inverse = jnp.asarray(values.ravel()[perm]), jnp.asarray(inverse.reshape(t.shape))
        small = structure.n_transient <= _unif.DENSE_STATES

        def kernel(dist, t, inverse, kind):
            # a top-level program (no tracer: outside any jit, vmap or derivative) of a small
            # chain compiles for a fast first answer (about half the compile time; per call
            # 5-30 % slower: loops should jit)
            fast = small and _unif.is_concrete(dist, t, inverse)
            run = dist._transient_kernel_latency if fast else dist._transient_kernel
            return run(t, kind, tol, max_steps, checked, order, lump, plan, inverse)

        if kind == "logpdf" and plan is None and _tangents.applies(self):
            # its theta-gradient from the forward series of an augmented chain, one program
            return _tangents.log_density(self, t, inverse, kernel)
        return kernel(self, t, inverse, kind)

    def _transient_body(self, t, kind, tol, max_steps, checked, order, lump, plan, inverse):
        """`_transient_values`, on the lumped chain when ``lump``."""
        dist = self._lumped() if lump else self
        return dist._transient_values(t, kind, tol, max_steps, checked, order, plan, inverse)

    _transient_kernel = eqx.filter_jit(_transient_body)
    # compiled for a fast first answer (`LATENCY_OPTIONS`): only as a top-level program
    _transient_kernel_latency = eqx.filter_jit(  # (jit's keywords pass through; untyped)
        _transient_body,
        compiler_options=LATENCY_OPTIONS,  # pyright: ignore[reportCallIssue]
    )

    def _transient_values(self, t, kind, tol, max_steps, checked, order, plan, inverse) -> Any:
        """One kernel per ``kind``: ``"logpdf"``, ``"sf"``, ``"cdf"``, ``"state"``
        (``alpha e^{St}``, transient states), ``"occupancy"`` (``int_0^t alpha e^{Su} du``)
        and ``"integral"`` (``int_0^t u^order alpha e^{Su} 1 du``), flattened over ``t``;
        by uniformization, or by dense scaling and squaring (`phasejax._expm`) given a
        ``plan``. ``"dlogpdf"``: the pair ``(log f, d log f / d theta)`` (`phasejax._tangents`).

        ``inverse``: ``None``, or ``t`` is flat and sorted (finite times ascending, ``inf``
        as 0) and the answer at the original position ``j`` is that at ``inverse[j]``
        (``inverse`` has the original shape).

        ``t = inf`` is evaluated at 0 and replaced by its limit, so its gradient is 0.
        """
        shape = t.shape if inverse is None else inverse.shape

        def restore(x):  # flat (per time) -> the original order and shape
            return x.reshape(shape + x.shape[1:]) if inverse is None else x[inverse]

        flat = jnp.ravel(t)
        if not checked:
            flat = _unif.check_times(flat)
        infinite = jnp.isinf(flat)
        lam = _unif.uniformization_rate(self.diag, shared=max_steps is None)
        finite_t = jnp.where(infinite, 0.0, flat)
        if plan is not None:
            log_v = _expm.transient(
                plan,
                self.rate,
                self.diag,
                self.alpha,
                self.exit,
                self.structure.src,
                self.structure.dst,
                lam,
                finite_t,
            )
        elif kind == "dlogpdf":  # (log f, its theta-Jacobian) by `phasejax._tangents`
            mu, lo, hi = self._window(tol, max_steps, lam, finite_t, flat)
            window = (jax.lax.stop_gradient(lam), mu, lo, hi, finite_t, inverse is not None)
            log_f, jacobian = _tangents.log_density_jacobian(self, *window)
            jacobian = jnp.where(infinite[:, None], 0.0, jacobian)  # t = inf: -inf, fixed
            return restore(jnp.where(infinite, -jnp.inf, log_f)), restore(jacobian)
        else:
            presorted = inverse is not None
            log_v = self._series(kind, tol, max_steps, order, lam, finite_t, flat, presorted)
        if kind == "logpdf":
            return restore(jnp.where(infinite, -jnp.inf, log_v[:, 0]))
        if kind in ("sf", "cdf"):  # probabilities: clipped to [0, 1] against rounding
            value = jnp.clip(jnp.exp(log_v[:, 0]), 0.0, 1.0)
            return restore(jnp.where(infinite, float(kind == "cdf"), value))
        if kind == "integral":
            return restore(jnp.exp(log_v[:, 0]))
        value = jnp.exp(log_v)
        if kind == "occupancy":
            # the limit t -> inf, solved only when asked for: with a singular S (an
            # epoch that need not be left) an unused solve would put NaN in gradients
            total = jax.lax.cond(
                jnp.any(infinite),
                lambda: self._solver()(self.alpha, transpose=True),
                lambda: jnp.zeros_like(self.alpha),
            )
            value = jnp.where(infinite[:, None], total, value)
        else:
            value = jnp.where(infinite[:, None], 0.0, value)
        return restore(value)

    @staticmethod
    def _window(tol, max_steps, lam, finite_t, flat):
        """``mu = Lambda t`` and each time's series window ``[0, hi]`` (`right_point`;
        ``max_steps``, optional, raises naming the time that needs more)."""
        mu = lam * finite_t
        hi = jnp.asarray(_unif.check_cap(_unif.right_point(mu, tol), max_steps, flat, "time"))
        return mu, jnp.zeros_like(hi), hi

    def _series(self, kind, tol, max_steps, order, lam, finite_t, flat, presorted=False):
        """``log`` of ``kind`` per time by uniformization (`_mix`), shape ``(t, q)``
        (``presorted``: ``finite_t`` is non-decreasing)."""
        mu, lo, hi = self._window(tol, max_steps, lam, finite_t, flat)
        n = self.structure.n_transient
        ones = jnp.ones(n, self.diag.dtype)
        proj = {"logpdf": self.exit, "cdf": self.exit, "sf": ones, "integral": ones}.get(kind)
        proj = None if proj is None else proj[:, None]
        return self._mix(
            proj,
            lam,
            mu,
            lo,
            hi,
            poisson=True,
            cumulative=kind in ("cdf", "occupancy", "integral"),
            order=order,
            offset=self.defect() if kind == "cdf" else 0.0,
            key=finite_t,  # the order of mu, shared by every theta of a batch
            presorted=presorted,
        )

    def logpdf(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """``log f(t)``, ``f(t) = alpha exp(S t) s``, by uniformization (log space throughout).

        Absolute truncation error of ``f`` at most ``tol * max(s)``; no term left of the
        Poisson window is dropped, so far tails keep their relative accuracy. The series
        runs as long as the largest ``Lambda t`` needs; ``max_steps`` (optional) caps it
        with an error naming the time. ``f(inf) = 0``.

        ``method`` (here and in the other transient quantities): ``"uniformization"``
        (cost ``~ Lambda t`` sparse steps, ``Lambda`` the largest exit rate), ``"expm"``
        (dense nonnegative scaling and squaring, cost ``~ n^3 (18 + log2(Lambda t))`` per
        time, for stiff models: rates over many orders of magnitude, long times; up to
        ``n = 1024``; ``tol`` and ``max_steps`` do not apply), or ``"auto"``: ``"expm"``
        when ``t`` and ``theta`` are concrete and the series would need over ``2^20``
        terms at a higher estimated cost, else uniformization. Under ``jit``, ``grad`` or
        ``vmap`` over ``theta`` or ``t``, ``"auto"`` is uniformization (``Lambda t`` is
        unknown when tracing): pass ``method="expm"`` there for stiff models.
        """
        return self._transient(t, "logpdf", tol, max_steps, method=method)

    def pdf(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """Density ``f(t) = alpha exp(S t) s`` (see [`logpdf`][phasejax.PhaseType.logpdf])."""
        return jnp.exp(self.logpdf(t, tol=tol, max_steps=max_steps, method=method))

    def sf(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """Survival ``P(T > t) = alpha exp(S t) 1`` (absolute error at most ``tol``)."""
        return self._transient(t, "sf", tol, max_steps, method=method)

    def cdf(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """``P(T <= t)``: defect plus ``sum_k Pois(k; Lambda t) sum_{j<k} (alpha P^j s) / Lambda``.

        Computed from the cumulative exit (not ``1 - sf``) so small values keep their
        relative precision.
        """
        return self._transient(t, "cdf", tol, max_steps, method=method)

    def state_probability(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """``P(X_t = i)`` for each vertex, shape ``t.shape + (V,)``: ``alpha exp(S t)``.

        Memory ``O(len(t) x n)`` plus one segment and the checkpoints of the series.
        """
        probs = self.transient_probability(
            jnp.ravel(jnp.asarray(t)), tol=tol, max_steps=max_steps, method=method
        )
        return jax.vmap(self.structure.to_vertices)(probs).reshape(jnp.shape(t) + (-1,))

    def transient_probability(
        self,
        t: Array,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """``alpha exp(S t)`` over transient states (not vertices), shape ``t.shape + (n,)``."""
        return self._transient(t, "state", tol, max_steps, method=method)

    def accumulated_occupancy(
        self,
        t: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        method: str = "auto",
    ) -> Array:
        """Expected time spent in each vertex up to ``t``: ``int_0^t alpha exp(S u) du``.

        Uses ``int_0^t Pois(k; Lambda u) du = P(N_{Lambda t} > k) / Lambda``, i.e. a
        Poisson mixture of ``sum_{j<k} alpha P^j / Lambda``.
        """
        occupancy = self._transient(
            jnp.ravel(jnp.asarray(t)), "occupancy", tol, max_steps, method=method
        )
        return jax.vmap(self.structure.to_vertices)(occupancy).reshape(jnp.shape(t) + (-1,))

    @_jit_checking_rewards
    def laplace(self, s: ArrayLike, rewards: ArrayLike | None = None) -> Array:
        """``E[exp(-s Y)] = defect + alpha (s R - S)^{-1} s_exit`` for ``s >= 0`` (one solve each)."""
        r = self._rewards(rewards)

        def one(si):
            si = eqx.error_if(si, (si < 0) | jnp.isnan(si), "laplace needs s >= 0")
            solve_ = self._solver(self.system.with_diag(self.diag + si * r))
            return self.defect() + self.alpha @ solve_(self.exit)

        s = jnp.asarray(s, self.diag.dtype)
        return jax.vmap(one)(s.ravel()).reshape(s.shape)


class DiscretePhaseType(AbstractPhaseType):
    """Discrete phase-type distribution ``DPH(alpha, T)``; ``tau >= 1`` counts steps."""

    def _moment_rhs(self, r, ms, rhss, k):
        rhs = r**k
        for j in range(1, k):
            t_mj = ms[j] - rhss[j]  # T m_j = m_j - M m_j
            rhs = rhs + comb(k, j) * r ** (k - j) * t_mj
        return rhs

    def _visit_correction(self, z, r):
        return (z[:, None] * r).T @ r

    def _time_scale(self):
        return jnp.ones((), self.diag.dtype)

    @eqx.filter_jit
    def factorial_moments(self, k: int) -> Float[Array, " k"]:
        """``E[tau (tau-1) ... (tau-j+1)] = j! alpha T^{j-1} U^j 1`` for j = 1..k.

        Uses ``T U = U - I``: the j-th vector is ``(U - I)^{j-1} U 1``.
        """
        solve_ = self._solver()
        v = solve_(jnp.ones_like(self.diag))
        out = [self.alpha @ v]
        for j in range(2, int(k) + 1):
            v = solve_(v) - v
            out.append(factorial(j) * (self.alpha @ v))
        return jnp.stack(out)

    def _steps(self, k, kind: str, max_steps: int | None):
        """Validate step counts (non-negative integers; integral floats accepted) in Python
        when concrete, then run `_steps_kernel`."""
        checked = _unif.is_concrete(k)
        if checked:
            values = np.asarray(k)
            if values.dtype.kind not in "iubf":
                raise TypeError(f"step counts must be integers, got dtype {values.dtype}")
            bad = values < 0
            if values.dtype.kind == "f":
                bad = bad | ~np.isfinite(values) | (values != np.round(values))
            if bad.any():
                value, i = _unif.first_bad(values, bad)
                raise ValueError(
                    f"step counts must be non-negative integers; got {value} at index {i}"
                )
            k = values.astype(np.int32)
            if max_steps is not None:
                last = k - 1 if kind in _ENDS_BEFORE_K else k
                _unif.check_cap(last, max_steps, k, "step count")
                max_steps = None
        return self._steps_kernel(jnp.asarray(k), kind, max_steps, checked)

    @eqx.filter_jit
    def _steps_kernel(self, k, kind, max_steps, checked):
        """One kernel per ``kind``: ``"pmf"`` (``log``), ``"sf"``, ``"cdf"``, ``"state"``
        (``alpha T^k``) and ``"visits"`` (``sum_{j<k} alpha T^j``), flattened over ``k``."""
        flat = jnp.ravel(k)
        if not checked:
            if jnp.issubdtype(flat.dtype, jnp.floating):
                flat = eqx.error_if(
                    flat,
                    jnp.any(flat != jnp.round(flat)),
                    "step counts must be non-negative integers",
                )
            flat = eqx.error_if(
                flat, jnp.any(flat < 0), "step counts must be non-negative integers"
            )
        flat = flat.astype(jnp.int32)
        shifted = kind in _ENDS_BEFORE_K
        hi = flat - 1 if shifted else flat
        hi = _unif.check_cap(hi, max_steps, flat, "step count")
        lo = jnp.zeros_like(hi) if kind in ("cdf", "visits") else hi
        n = self.structure.n_transient
        proj = {"pmf": self.exit, "cdf": self.exit, "sf": jnp.ones(n, self.diag.dtype)}.get(kind)
        proj = None if proj is None else proj[:, None]
        mu = jnp.zeros(flat.shape, self.diag.dtype)
        log_v = self._mix(proj, 1.0, mu, lo, hi, poisson=False)
        if kind == "pmf":
            log_defect = _unif.safe_log(self.defect())
            return jnp.where(flat == 0, log_defect, log_v[:, 0]).reshape(k.shape)
        if kind == "sf":
            return jnp.clip(jnp.exp(log_v[:, 0]), 0.0, 1.0).reshape(k.shape)
        if kind == "cdf":
            return jnp.clip(self.defect() + jnp.exp(log_v[:, 0]), 0.0, 1.0).reshape(k.shape)
        return jnp.exp(log_v).reshape(k.shape + (n,))

    def pmf(self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau = k) = alpha T^{k-1} t`` for ``k >= 1``; ``P(tau = 0)`` is the defect.

        ``k``: non-negative integers (integral floats are accepted); the series runs as
        far as the largest ``k`` (``max_steps``, optional, caps it).
        """
        return jnp.exp(self.logpmf(k, max_steps=max_steps))

    def logpmf(self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS) -> Array:
        """``log P(tau = k)``."""
        return self._steps(k, "pmf", max_steps)

    def sf(self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau > k) = alpha T^k 1``."""
        return self._steps(k, "sf", max_steps)

    def cdf(self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau <= k)`` = defect + cumulative pmf (keeps relative precision when small)."""
        return self._steps(k, "cdf", max_steps)

    def state_probability(
        self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(X_k = i)`` per vertex (``alpha T^k``), shape ``k.shape + (V,)``."""
        probs = self._steps(jnp.ravel(jnp.asarray(k)), "state", max_steps)
        return jax.vmap(self.structure.to_vertices)(probs).reshape(jnp.shape(k) + (-1,))

    def expected_visits_until(
        self, k: ArrayLike, *, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """Expected visits to each vertex during steps ``0..k-1``: ``sum_{j<k} alpha T^j``."""
        visits = self._steps(jnp.ravel(jnp.asarray(k)), "visits", max_steps)
        return jax.vmap(self.structure.to_vertices)(visits).reshape(jnp.shape(k) + (-1,))
