"""phasejax.popgen against other programs: moments (diffusion) expected SFS, and msprime
simulations of TMRCA and total branch length (test extras; skipped when missing)."""

import equinox as eqx
import numpy as np
import pytest

demes = pytest.importorskip("demes")
pg = pytest.importorskip("phasejax.popgen")


def _bottleneck_growth():
    b = demes.Builder(time_units="generations")
    b.add_deme(
        "A",
        epochs=[
            dict(start_size=10_000, end_time=2000),
            dict(start_size=1000, end_time=500),
            dict(start_size=2000, end_size=20_000, end_time=0),
        ],
    )
    return b.resolve()


def _split_migration_pulse():
    b = demes.Builder(time_units="generations")
    b.add_deme("anc", epochs=[dict(start_size=2000, end_time=1000)])
    b.add_deme("A", ancestors=["anc"], epochs=[dict(start_size=1000)])
    b.add_deme("B", ancestors=["anc"], epochs=[dict(start_size=3000)])
    b.add_migration(source="A", dest="B", rate=2e-4, start_time=600)
    b.add_migration(source="B", dest="A", rate=1e-4, start_time=600)
    b.add_pulse(sources=["B"], dest="A", time=200, proportions=[0.2])
    return b.resolve()


def _three_demes_admixture():
    b = demes.Builder(time_units="generations")
    b.add_deme("anc", epochs=[dict(start_size=1500, end_time=800)])
    b.add_deme("A", ancestors=["anc"], epochs=[dict(start_size=800)])
    b.add_deme("B", ancestors=["anc"], epochs=[dict(start_size=2500)])
    b.add_deme(
        "C",
        ancestors=["A", "B"],
        proportions=[0.3, 0.7],
        start_time=150,
        epochs=[dict(start_size=400, end_size=1600)],
    )
    b.add_migration(source="A", dest="B", rate=3e-4)
    return b.resolve()


@pytest.mark.slow
def test_against_moments():
    """moments' expected SFS (theta = 4 N_ref mu = 1) is half our branch lengths in units of
    2 N_ref. Measured: bottleneck + growth n = 10, max relative difference 7e-5 (moments'
    integration error). Split + time-limited migration + pulse, joint (4, 3): moments
    closes its migration and pulse terms by jackknife, so it is run at (N, N) and
    projected; its difference to ours falls with N towards zero:
    N = 4 (direct) 1.4e-2, N = 20: 4.9e-4, 40: 7.5e-5, 60: 2.3e-5 (without the pulse:
    7.8e-4, 1.2e-4, 3.2e-5)."""
    moments = pytest.importorskip("moments")
    sfs = eqx.filter_jit(lambda d: d.expected_sfs())
    g = _bottleneck_growth()
    ours = np.asarray(sfs(pg.from_demes(g, {"A": 10}))) / 2
    ref = np.asarray(moments.Spectrum.from_demes(g, sampled_demes=["A"], sample_sizes=[10]))
    np.testing.assert_allclose(ours[1:-1], ref[1:-1], rtol=2e-4)
    g = _split_migration_pulse()
    ours = np.asarray(sfs(pg.from_demes(g, {"A": 4, "B": 3}))) / 2
    ref = moments.Spectrum.from_demes(g, sampled_demes=["A", "B"], sample_sizes=[40, 40])
    ref = np.asarray(ref.project([4, 3]))
    inner = np.ones_like(ours, bool)
    inner[0, 0] = inner[-1, -1] = False
    np.testing.assert_allclose(ours[inner], ref[inner], rtol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "graph, samples",
    [
        (_bottleneck_growth, {"A": 6}),
        (_split_migration_pulse, {"A": 3, "B": 2}),
        (_three_demes_admixture, {"A": 2, "B": 2, "C": 3}),
    ],
)
def test_against_msprime(graph, samples):
    """Mean TMRCA and total branch length (generations) within 4 standard errors of 4000
    msprime replicates."""
    msprime = pytest.importorskip("msprime")
    g = graph()
    model = pg.from_demes(g, samples, time_units="generations")
    mean_t, mean_l = eqx.filter_jit(lambda d: (d.tmrca().mean(), d.total_length().mean()))(model)
    reps = msprime.sim_ancestry(
        # haploid samples of diploids (msprime's ploidy=1 would rescale time to N, not 2N)
        samples=[msprime.SampleSet(n, population=name, ploidy=1) for name, n in samples.items()],
        demography=msprime.Demography.from_demes(g),
        num_replicates=4000,
        random_seed=7,
    )
    t, length = np.array([(ts.max_root_time, ts.first().total_branch_length) for ts in reps]).T
    for sim, exact in [(t, mean_t), (length, mean_l)]:
        se = sim.std() / np.sqrt(sim.size)
        assert abs(sim.mean() - exact) < 4 * se, (sim.mean(), exact, se)
