"""The registries of regcore's components.

Each one imports its package's modules on first use, so a new component is one new
file in that package. This module imports nothing heavy: reading a spec's structure
does not load torch until a component is looked up.
"""

from regcore.registry import Registry

DATASETS: Registry = Registry("dataset", package="regcore.data")
MODELS: Registry = Registry("model", package="regcore.models")
REGULARIZERS: Registry = Registry("regularizer", package="regcore.regularizers")
ANALYSES: Registry = Registry("analysis", package="regcore.analysis")
ATTACKS: Registry = Registry("attack", package="regcore.attacks")

__all__ = ["ANALYSES", "ATTACKS", "DATASETS", "MODELS", "REGULARIZERS"]
