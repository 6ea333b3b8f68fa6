"""``evaluate_batch`` across two local CPU processes (``jax.distributed`` + Gloo) against
one process's ``vmap`` and the closed forms of the Kingman coalescent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from phasejax.infer import evaluate_batch

THETAS = np.linspace(0.5, 2.0, 7)[:, None]  # 7: not a multiple of 2, so padded
N = 6

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import numpy as np
    import phasejax as pj
    from phasejax.infer import evaluate_batch

    model = pj.models.kingman({n}).compile()
    out = evaluate_batch(lambda t: (model(t).mean(), model(t).moments(2)), np.array({thetas}))
    print(json.dumps({{"devices": jax.device_count(), "local": jax.local_device_count(),
                      "mean": out[0].tolist(), "moments": out[1].tolist()}}))
    """
)


def closed_form(theta):
    k = np.arange(2, N + 1)
    mean = 2 * (1 - 1 / N) / theta
    var = np.sum(1 / (k * (k - 1) / 2) ** 2) / theta**2
    return mean, var + mean**2


def test_single_process_matches_vmap():
    model = pj.models.kingman(N).compile()
    got = evaluate_batch(lambda t: model(t).moments(2), THETAS)
    want = jax.jit(jax.vmap(lambda t: model(t).moments(2)))(jnp.asarray(THETAS))
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_batch(lambda t: t, np.zeros((0, 1)))


@pytest.mark.slow
def test_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(n=N, thetas=THETAS.tolist()))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"localhost:{port}", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    mean, second = closed_form(THETAS[:, 0])
    for r in results:
        assert r["devices"] == 2 and r["local"] == 1  # one CPU device in each process
        np.testing.assert_allclose(r["mean"], mean, rtol=1e-13)
        np.testing.assert_allclose(
            np.asarray(r["moments"]), np.stack([mean, second], 1), rtol=1e-13
        )
