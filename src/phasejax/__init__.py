"""phasejax: phase-type distributions from state-space graphs, in pure JAX."""

from . import models
from ._compile import Model, Structure, compile_graph, linear_rates, make_structure
from ._distribution import AbstractPhaseType, DiscretePhaseType, PhaseType
from ._epochs import EpochPhaseType, epochs
from ._graph import Graph, Matrices, Vertex
from ._mutations import joint_mutation_pmf
from ._rewards import DiscreteRewardTransform, RewardTransform, mutation_counts, reward_transform
from ._solve import AbstractSolver, DenseLU, Krylov, LevelSweep, System

__all__ = [
    "AbstractPhaseType",
    "AbstractSolver",
    "DenseLU",
    "DiscretePhaseType",
    "DiscreteRewardTransform",
    "EpochPhaseType",
    "Graph",
    "Krylov",
    "LevelSweep",
    "Matrices",
    "Model",
    "PhaseType",
    "RewardTransform",
    "Structure",
    "System",
    "Vertex",
    "compile_graph",
    "epochs",
    "joint_mutation_pmf",
    "linear_rates",
    "make_structure",
    "models",
    "mutation_counts",
    "reward_transform",
]
