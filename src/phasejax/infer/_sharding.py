"""Particles sharded over a 1-D device mesh (axis ``"particles"``).

With several devices, the particle axis (axis 0 of the particles and of every
optimizer-state array shaped like them) is split across all devices; everything else
is replicated. The kernel's all-pairs terms make XLA gather the particles once per
step; the per-particle log densities and gradients, the expensive part, run in
parallel.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "particles"


def particle_sharding(n_particles: int, shard: bool | None) -> NamedSharding | None:
    """The sharding for arrays with a leading particle axis, or ``None`` (single device).

    ``shard=None``: shard when more than one device exists and ``n_particles`` divides
    evenly; ``True``: insist (error if it cannot); ``False``: never.
    """
    devices = jax.devices()
    if shard is False or (shard is None and len(devices) == 1):
        return None
    if n_particles % len(devices):
        if shard:
            raise ValueError(
                f"cannot shard {n_particles} particles evenly over {len(devices)} devices: "
                "use a multiple of the device count"
            )
        return None
    mesh = Mesh(np.asarray(devices), (AXIS,))
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(sharding.mesh, PartitionSpec())


def _is_particle_array(x, n_particles: int) -> bool:
    return hasattr(x, "shape") and getattr(x, "ndim", 0) >= 1 and x.shape[0] == n_particles


def constrain(tree, n_particles: int, sharding: NamedSharding | None):
    """``with_sharding_constraint`` on every particle-leading array of ``tree`` (in jit)."""
    if sharding is None:
        return tree
    return jax.tree.map(
        lambda x: (
            jax.lax.with_sharding_constraint(x, sharding)
            if _is_particle_array(x, n_particles)
            else x
        ),
        tree,
    )


def place(tree, n_particles: int, sharding: NamedSharding | None):
    """``device_put`` particle-leading arrays sharded, other arrays replicated."""
    if sharding is None:
        return tree
    rep = replicated(sharding)

    def put(x):
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.device_put(x, sharding if _is_particle_array(x, n_particles) else rep)
        return x

    return jax.tree.map(put, tree)
