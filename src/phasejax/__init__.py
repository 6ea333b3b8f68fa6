"""phasejax: phase-type distributions from state-space graphs, in pure JAX."""

from ._compile import Model, Structure, compile_graph, linear_rates, make_structure
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
    "Structure",
    "System",
    "Vertex",
    "compile_graph",
    "linear_rates",
    "make_structure",
    "models",
]
