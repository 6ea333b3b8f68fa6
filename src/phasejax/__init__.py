"""phasejax: phase-type distributions from state-space graphs, in pure JAX."""

from ._compile import Model, compile_graph, linear_rates
from ._distribution import AbstractPhaseType, DiscretePhaseType, PhaseType
from ._graph import Graph, Matrices, Vertex
from ._solve import AbstractSolver, DenseLU, Krylov, LevelSweep, System
from . import models

__all__ = [
    "AbstractPhaseType",
    "AbstractSolver",
    "DenseLU",
    "DiscretePhaseType",
    "Graph",
    "Krylov",
    "LevelSweep",
    "Matrices",
    "Model",
    "PhaseType",
    "System",
    "Vertex",
    "compile_graph",
    "linear_rates",
    "models",
]
