"""Plumbing for extension authors: stable enough to use, not part of the main API.

- [`compile_graph`][phasejax.internal.compile_graph]: what ``Graph.compile`` calls.
- [`make_structure`][phasejax.internal.make_structure]: a
  [`phasejax.Structure`][] from numpy edge arrays over transient states.
- [`at_trace_time`][phasejax.internal.at_trace_time]: run a host-side builder of
  static arrays eagerly even while tracing.
- [`linear_rates`][phasejax.internal.linear_rates]: the default rate function.
- [`reward_transform`][phasejax.internal.reward_transform]: the function behind
  ``dist.reward_transform``.
"""

from ._compile import compile_graph, linear_rates
from ._rewards import reward_transform
from ._structure import at_trace_time, make_structure

__all__ = ["at_trace_time", "compile_graph", "linear_rates", "make_structure", "reward_transform"]
