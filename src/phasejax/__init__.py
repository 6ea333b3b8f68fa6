"""phasejax: phase-type distributions from state-space graphs, in pure JAX."""

from importlib.metadata import PackageNotFoundError, version

from . import internal, models
from ._compile import Model
from ._distribution import AbstractPhaseType, DiscretePhaseType, PhaseType
from ._epochs import EpochPhaseType, EpochReward, epochs
from ._graph import Graph, Matrices, Vertex
from ._mutations import joint_mutation_pmf, mutation_counts
from ._rewards import DiscreteRewardTransform, RewardTransform
from ._solve import GMRES, AbstractSolver, BlockSweep, DenseLU, LevelSweep, System
from ._structure import Structure

try:
    __version__ = version("phasejax")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name):
    # popgen's SFS fits are inference targets, so it loads phasejax.infer (and optax):
    # imported on first use, keeping `import phasejax` light
    if name == "popgen":
        from importlib import import_module

        return import_module(".popgen", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GMRES",
    "AbstractPhaseType",
    "AbstractSolver",
    "BlockSweep",
    "DenseLU",
    "DiscretePhaseType",
    "DiscreteRewardTransform",
    "EpochPhaseType",
    "EpochReward",
    "Graph",
    "LevelSweep",
    "Matrices",
    "Model",
    "PhaseType",
    "RewardTransform",
    "Structure",
    "System",
    "Vertex",
    "__version__",
    "epochs",
    "internal",
    "joint_mutation_pmf",
    "models",
    "mutation_counts",
    "popgen",  # pyright: ignore[reportUnsupportedDunderAll] (lazy, see __getattr__)
]
