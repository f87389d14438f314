"""vargo's framework: registries, types, interfaces, objective, runner loop, hooks, checkpoint IO.

Knows no model and no paper; see docs/design.md.
"""
from . import checkpoint as _checkpoint  # noqa: F401  (registers the atomic file backend)
