"""A batch of parameter vectors evaluated across processes (multi-host JAX).

Multi-process JAX is the engine: every process runs the same program and calls
``jax.distributed.initialize(coordinator_address, num_processes, process_id)`` first;
``jax.devices()`` then lists the devices of every process (on CPU, one per process,
with Gloo collectives). [`evaluate_batch`][phasejax.infer.evaluate_batch] lays the batch out over a 1-D mesh of
all those devices, each process computing its own share under ``jit(vmap(fn))``, and
gathers the results so that every process returns the whole batch. In a single
process it is a sharded ``vmap`` over the local devices.

Example (two processes on one machine, ``i`` = 0 and 1):

    import jax
    jax.distributed.initialize("localhost:12345", num_processes=2, process_id=i)
    import numpy as np, phasejax as pj
    from phasejax.infer import evaluate_batch

    model = pj.models.kingman(10).compile()
    thetas = np.linspace(0.5, 2.0, 100)[:, None]        # the same in every process
    means = evaluate_batch(lambda t: model(t).mean(), thetas)   # (100,) in both
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import ArrayLike

AXIS = "batch"


def evaluate_batch(fn: Callable, thetas: ArrayLike):
    """``vmap(fn)(thetas)`` spread over every device of every process.

    **Arguments:**

    - `fn`: a JAX function of one parameter vector (any output pytree).
    - `thetas`: the batch, shape ``(B, ...)``, identical in every process. It is padded
      (repeating its last row) to a multiple of the device count; the padding is dropped.

    **Returns:** the outputs for the whole batch, as numpy arrays with leading axis ``B``,
    in every process.
    """
    thetas = np.asarray(thetas)
    if thetas.ndim == 0 or thetas.shape[0] == 0:
        raise ValueError(f"thetas must have a non-empty leading batch axis, got {thetas.shape}")
    devices = jax.devices()
    size = thetas.shape[0]
    padding = -size % len(devices)
    padded = np.concatenate([thetas, np.repeat(thetas[-1:], padding, axis=0)])
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))
    batch = jax.make_array_from_callback(padded.shape, sharding, lambda index: padded[index])
    out = jax.jit(jax.vmap(fn), out_shardings=sharding)(batch)
    gathered = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda x: np.asarray(x)[:size], gathered)
