"""Graph builders for common phase-type models (each returns a [`phasejax.Graph`][phasejax.Graph])."""

from ._coalescent import (
    IsolationWithMigration,
    PiecewiseKingman,
    jsfs_rewards,
    kingman,
    sfs_rewards,
    two_island,
)
from ._queues import birth_death, mm1_capacity
from ._recombination import tmrca_rewards, two_locus
from ._simple import coxian, erlang, rabbit_flooding

__all__ = [
    "IsolationWithMigration",
    "PiecewiseKingman",
    "birth_death",
    "coxian",
    "erlang",
    "jsfs_rewards",
    "kingman",
    "mm1_capacity",
    "rabbit_flooding",
    "sfs_rewards",
    "tmrca_rewards",
    "two_island",
    "two_locus",
]
