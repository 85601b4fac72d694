"""Analyses run on a trained checkpoint (attacks, decision boundaries, geometry, plots).

Each one is a module here registered in ``regcore.registries.ANALYSES``.
"""
