"""Datasets, registration and data utilities of hila_d2."""

from . import builtin  # noqa: F401  (registers datasets)
