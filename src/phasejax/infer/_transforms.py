"""Bijections from unconstrained particles ``z`` to positive parameters ``theta``."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractTransform(eqx.Module):
    """``forward(z) -> theta``, ``inverse(theta) -> z`` and ``log_det(z)``
    (``sum log |d theta / d z|``), all elementwise over parameters."""

    @abc.abstractmethod
    def forward(self, z: Float[Array, " p"]) -> Float[Array, " p"]: ...

    @abc.abstractmethod
    def inverse(self, theta: Float[Array, " p"]) -> Float[Array, " p"]: ...

    @abc.abstractmethod
    def log_det(self, z: Float[Array, " p"]) -> Float[Array, ""]: ...


class Softplus(AbstractTransform):
    """``theta = log(1 + e^z)``: about linear for large ``theta``, ``e^z`` for small."""

    def forward(self, z):
        return jax.nn.softplus(z)

    def inverse(self, theta):
        theta = jnp.asarray(theta)
        return theta + jnp.log(-jnp.expm1(-theta))

    def log_det(self, z):
        return jnp.sum(jax.nn.log_sigmoid(z))


class Exp(AbstractTransform):
    """``theta = e^z`` (log scale)."""

    def forward(self, z):
        return jnp.exp(z)

    def inverse(self, theta):
        return jnp.log(jnp.asarray(theta))

    def log_det(self, z):
        return jnp.sum(z)


class Identity(AbstractTransform):
    """``theta = z`` (the parameters must stay valid on their own)."""

    def forward(self, z):
        return z

    def inverse(self, theta):
        return jnp.asarray(theta)

    def log_det(self, z):
        return jnp.zeros((), z.dtype)


_NAMED = {"softplus": Softplus, "exp": Exp, "log": Exp, "identity": Identity}


def as_transform(transform) -> AbstractTransform:
    if isinstance(transform, AbstractTransform):
        return transform
    try:
        return _NAMED[transform]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown transform {transform!r}: use 'softplus', 'exp', 'identity' or a transform object"
        ) from None
