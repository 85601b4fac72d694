"""Regularizers: one module each, registered in ``regcore.registries.REGULARIZERS``.

The hook interface is ``regcore.regularizers.base.Regularizer``.
"""

from regcore.regularizers.base import Regularizer, StepContext, build_regularizers

__all__ = ["Regularizer", "StepContext", "build_regularizers"]
