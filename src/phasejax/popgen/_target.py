"""An observed (joint) SFS as an inference target: what
[`phasejax.infer.map_estimate`][] and [`phasejax.infer.fit_svgd`][] take.

popgen and infer sit side by side above the core; this module is the one place where
popgen reaches into infer (the target contract, priors and transforms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..infer._priors import AbstractPrior, as_prior
from ..infer._target import AbstractTarget
from ..infer._transforms import AbstractTransform, as_transform
from ._demes import Demography
from ._likelihood import (
    BlockBootstrap,
    block_bootstrap,
    multinomial_loglik,
    poisson_loglik,
    profiled_mutation_rate,
    standard_errors,
)

_FIELDS = ("breaks", "sizes", "growth", "migration", "transfers")
_LIKELIHOODS = ("poisson", "multinomial")


class DemographyParameters(eqx.Module):
    """``theta -> Demography``: named entries of a template
    [`Demography`][phasejax.popgen.Demography] set from ``theta`` (natural units:
    generations, diploid sizes, rates per generation).

    **Arguments:**

    - `template`: the demography (e.g. from [`phasejax.popgen.from_demes`][]); entries
      not named stay at its values.
    - `params`: name -> ``(field, index)`` or ``(field, [index, ...])`` (one parameter
      setting several entries, e.g. a size over epochs that other events cut). ``field``
      is one of ``breaks``, ``sizes``, ``growth``, ``migration``, ``transfers``; an index
      may name demes instead of numbers, e.g. ``("sizes", (1, "A"))`` (epoch 1 of deme
      ``A``; see `template.breaks` for the epochs) or ``("breaks", 0)``.

    Every entry of one parameter must hold the same value in the template. The
    size-change refinement of ``template`` is kept: its error target holds near the
    template's values. Keep ``breaks`` in increasing order (the fits do not enforce it).
    """

    template: Demography
    names: tuple[str, ...] = eqx.field(static=True)
    entries: tuple[tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]], ...] = eqx.field(
        static=True
    )

    def __init__(self, template: Demography, params: Mapping[str, tuple]):
        if not isinstance(template, Demography):
            raise TypeError(f"template must be a popgen.Demography, got {type(template).__name__}")
        by_field: dict[str, tuple[list[int], list[tuple[int, ...]]]] = {}
        for i, (name, spec) in enumerate(params.items()):
            if not (isinstance(spec, tuple) and len(spec) == 2 and spec[0] in _FIELDS):
                raise ValueError(
                    f"parameter {name!r}: give (field, index) with field one of {_FIELDS}, "
                    f"got {spec!r}"
                )
            field, where = spec
            value = np.asarray(getattr(template, field))
            indices = where if isinstance(where, list) else [where]
            resolved = [self._index(template, name, field, value.shape, w) for w in indices]
            values = {float(value[ix]) for ix in resolved}
            if len(values) != 1:
                raise ValueError(
                    f"parameter {name!r} ties entries of {field} with different values "
                    f"{sorted(values)}"
                )
            ids, idx = by_field.setdefault(field, ([], []))
            ids.extend([i] * len(resolved))
            idx.extend(resolved)
        self.template = template
        self.names = tuple(params)
        self.entries = tuple((f, tuple(ids), tuple(idx)) for f, (ids, idx) in by_field.items())

    @staticmethod
    def _index(template, name, field, shape, where) -> tuple[int, ...]:
        where = where if isinstance(where, tuple) else (where,)
        if len(where) != len(shape):
            raise ValueError(
                f"parameter {name!r}: {field} has shape {shape}, index {where!r} needs "
                f"{len(shape)} entries"
            )
        out = []
        for w, size in zip(where, shape):
            if isinstance(w, str):
                if w not in template.demes:
                    raise ValueError(
                        f"parameter {name!r}: no deme {w!r} (demes: {list(template.demes)})"
                    )
                w = template.demes.index(w)
            if not (isinstance(w, (int, np.integer)) and 0 <= w < size):
                raise ValueError(f"parameter {name!r}: index {where!r} is outside {field}{shape}")
            out.append(int(w))
        return tuple(out)

    @property
    def n_params(self) -> int:
        return len(self.names)

    def initial(self) -> Float[Array, " p"]:
        """``theta`` at the template's values."""
        theta = np.zeros(self.n_params)
        for field, ids, idx in self.entries:
            value = np.asarray(getattr(self.template, field))
            for i, ix in zip(ids, idx):
                theta[i] = value[ix]
        return jnp.asarray(theta)

    def __call__(self, theta: Float[Array, " p"]) -> Demography:
        if not self.entries:  # nothing free (e.g. only the mutation rate is fitted)
            return self.template
        fields = [field for field, _, _ in self.entries]
        new = []
        for field, ids, idx in self.entries:
            rows = tuple(np.array(axis) for axis in zip(*idx))
            array = getattr(self.template, field)
            new.append(array.at[rows].set(theta[np.array(ids)].astype(array.dtype)))
        return eqx.tree_at(lambda d: [getattr(d, f) for f in fields], self.template, new)


def _observed(observed: ArrayLike, shape: tuple[int, ...]) -> Array:
    """``(B, *shape)`` blocks of the observed spectrum, checked on the concrete values."""
    x = np.asarray(observed, dtype=float)
    if x.shape == shape:
        x = x[None]
    if x.shape[1:] != shape or x.shape[0] == 0:
        raise ValueError(
            f"observed SFS has shape {np.shape(observed)}: expected {shape} (the samples' "
            f"n + 1 per deme) or (blocks, *{shape})"
        )
    for bad, why in ((~np.isfinite(x), "is not finite"), (x < 0, "is negative")):
        if bad.any():
            where = tuple(int(i) for i in np.unravel_index(np.argmax(bad), x.shape))
            raise ValueError(f"observed SFS entry {where} = {x[where]} {why}")
    return jnp.asarray(x)


class SFSPosterior(AbstractTarget):
    """The posterior (with ``prior=None``: the likelihood) of demographic parameters given
    an observed (joint) site frequency spectrum; an
    [`phasejax.infer.AbstractTarget`][], so [`phasejax.infer.map_estimate`][] and
    [`phasejax.infer.fit_svgd`][] take it like a [`phasejax.infer.Posterior`][].

    ``theta`` holds the demographic parameters in natural units (generations, diploid
    sizes, rates per generation) and, with ``mutation_rate="free"``, last, the mutation
    rate per generation over the whole sequence.

    **Arguments:**

    - `model`: a [`DemographyParameters`][phasejax.popgen.DemographyParameters], a
      [`Demography`][phasejax.popgen.Demography] with `params` (the mapping
      ``DemographyParameters`` takes), or any function ``theta -> Demography`` with
      `params` the names of its parameters.
    - `observed`: the observed SFS, shape of ``expected_sfs(folded)`` (the samples'
      ``n + 1`` per deme), or blocks of it, ``(B, ...)``, for linked sites (standard
      errors by ``"godambe"`` or ``"bootstrap"``).
    - `likelihood`: ``"poisson"`` (Poisson random field: site counts independent
      Poisson with means ``u * g * E_a``, ``u`` the mutation rate per generation over
      the sequence, ``g`` generations per time unit, ``E`` the expected branch-length
      SFS) or ``"multinomial"`` (given the number of segregating sites; free of ``u``).
    - `mutation_rate`: Poisson only: ``u`` known (a number), ``"free"`` (estimated: the
      last entry of ``theta``) or ``None`` (profiled out at its maximum).
    - `block_weights`: ``(B,)`` relative lengths of the blocks (default equal): block
      ``b``'s Poisson means are ``w_b / sum w`` of the whole.
    - `folded`: ``observed`` is folded ([`phasejax.popgen.fold`][]).
    - `prior`: as for [`phasejax.infer.Posterior`][] (``None``: flat, the MLE).
    - `transform`: ``"exp"`` by default (parameters on the log scale: sizes and times
      span orders of magnitude), or ``"softplus"``, ``"identity"``, a transform.
    - `sfs_options`: keyword arguments of ``Demography.expected_sfs`` (``method``,
      ``max_states``).
    """

    model: Callable
    observed: Array
    block_weights: Array
    mutation_rate: Array | None
    prior: AbstractPrior
    transform: AbstractTransform
    names: tuple[str, ...] = eqx.field(static=True)
    likelihood: str = eqx.field(static=True)
    free_mutation_rate: bool = eqx.field(static=True)
    folded: bool = eqx.field(static=True)
    sfs_options: tuple = eqx.field(static=True)

    def __init__(
        self,
        model,
        observed: ArrayLike,
        *,
        params: Mapping[str, tuple] | Sequence[str] | None = None,
        likelihood: str = "poisson",
        mutation_rate: float | str | None = None,
        block_weights: ArrayLike | None = None,
        folded: bool = False,
        prior,
        transform="exp",
        sfs_options: dict | None = None,
    ):
        if isinstance(model, Demography):
            if not isinstance(params, Mapping):
                raise TypeError(
                    "with a Demography give params={name: (field, index), ...} (see "
                    "popgen.DemographyParameters)"
                )
            model = DemographyParameters(model, params)
        if isinstance(model, DemographyParameters):
            names = model.names
        elif callable(model):
            if params is None or isinstance(params, (str, Mapping)):
                raise TypeError("with a function theta -> Demography give params=[names, ...]")
            names = tuple(params)
        else:
            raise TypeError(f"model must be a Demography or a function, got {model!r}")
        if likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
        if likelihood == "multinomial" and mutation_rate is not None:
            raise ValueError(
                "the multinomial likelihood is free of the mutation rate: leave it None"
            )
        self.free_mutation_rate = mutation_rate == "free"
        if self.free_mutation_rate:
            names = (*names, "mutation_rate")
            self.mutation_rate = None
        elif mutation_rate is None:
            self.mutation_rate = None
        else:
            if isinstance(mutation_rate, str) or not float(mutation_rate) > 0:
                raise ValueError(
                    f"mutation_rate must be a positive number, 'free' or None, got {mutation_rate!r}"
                )
            self.mutation_rate = jnp.asarray(float(mutation_rate))
        if not names:
            raise ValueError("no free parameters (give params, or mutation_rate='free')")
        self.model = model
        self.names = names
        self.likelihood = likelihood
        self.folded = bool(folded)
        self.sfs_options = tuple(sorted((sfs_options or {}).items()))
        n_demographic = len(names) - self.free_mutation_rate
        samples = jax.eval_shape(model, jnp.zeros(n_demographic)).samples
        self.observed = _observed(observed, tuple(n + 1 for _, n in samples))
        n_blocks = self.observed.shape[0]
        w = np.ones(n_blocks) if block_weights is None else np.asarray(block_weights, float)
        if w.shape != (n_blocks,) or not np.all(w > 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"block_weights must be {n_blocks} positive numbers, got {w}")
        self.block_weights = jnp.asarray(w / w.sum())
        self.prior = as_prior(prior)
        self.transform = as_transform(transform)

    @property
    def n_params(self) -> int:
        return len(self.names)

    def demography(self, theta: Float[Array, " p"]) -> Demography:
        """The demography at ``theta``."""
        n = self.n_params - self.free_mutation_rate
        return self.model(theta[:n])

    def expected(self, theta: Float[Array, " p"]) -> Array:
        """The expected branch-length SFS (folded if the data are) at ``theta``."""
        return self._expected(self.demography(theta))

    def _expected(self, demography: Demography) -> Array:
        return demography.expected_sfs(self.folded, **dict(self.sfs_options))

    def _rate(self, theta: Float[Array, " p"], demography: Demography):
        """Mutation rate per time unit of the expected SFS (``None``: profiled)."""
        if self.free_mutation_rate:
            return theta[-1] * demography.scale
        if self.mutation_rate is None:
            return None
        return self.mutation_rate * demography.scale

    def block_log_likelihoods(self, theta: Float[Array, " p"]) -> Float[Array, " B"]:
        """Per-block log-likelihoods ``(B,)`` at ``theta``; their sum is the
        log-likelihood of the summed spectrum up to a constant free of ``theta`` (Poisson:
        ``sum_b S_b log w_b`` and the factorials). A profiled mutation rate is fitted to
        the whole spectrum."""
        demography = self.demography(theta)
        expected = self._expected(demography)
        if self.likelihood == "multinomial":
            return jax.vmap(lambda x: multinomial_loglik(x, expected, folded=self.folded))(
                self.observed
            )
        rate = self._rate(theta, demography)
        if rate is None:  # profiled: u_hat = sum x / sum E over every block
            rate = profiled_mutation_rate(
                jnp.sum(self.observed, axis=0), expected, folded=self.folded
            )
        return jax.vmap(lambda x, w: poisson_loglik(x, expected, w * rate, folded=self.folded))(
            self.observed, self.block_weights
        )

    def log_likelihood(self, theta: Float[Array, " p"]) -> Float[Array, ""]:
        return jnp.sum(self.block_log_likelihoods(theta))

    def log_density_theta(self, theta: Float[Array, " p"], step=0) -> Float[Array, ""]:
        return self.log_likelihood(theta) + self.prior.log_prob(theta)

    def standard_errors(
        self,
        theta: ArrayLike,
        *,
        method: str = "hessian",
        key: Array | None = None,
        n_resamples: int = 200,
    ) -> Float[Array, " p"]:
        """Standard errors of ``theta`` (the MLE) by
        [`phasejax.popgen.standard_errors`][] on the per-block log-likelihoods (the
        prior is left out). ``"bootstrap"`` refits on the transform's scale
        (e.g. log sizes), then maps the refits back."""
        theta = jnp.asarray(theta, jnp.result_type(float))
        if method != "bootstrap":
            return standard_errors(self.block_log_likelihoods, theta, method=method)
        if key is None:
            raise ValueError("method='bootstrap' needs key= (a JAX PRNG key)")
        return self.bootstrap(theta, key, n_resamples).se

    def bootstrap(self, theta: ArrayLike, key: Array, n_resamples: int = 200) -> BlockBootstrap:
        """Block-bootstrap refits of the MLE ``theta`` (see
        [`phasejax.popgen.block_bootstrap`][]), run on the transform's scale (e.g. log
        sizes, which keeps them positive) and returned as ``theta``."""
        tf = self.transform
        z = tf.inverse(jnp.asarray(theta, jnp.result_type(float)))
        out = block_bootstrap(
            lambda z: self.block_log_likelihoods(tf.forward(z)), z, key, n_resamples
        )
        return eqx.tree_at(lambda b: b.estimates, out, jax.vmap(tf.forward)(out.estimates))
