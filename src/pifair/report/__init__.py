"""Plots and the self-contained HTML report."""

from . import plots

__all__ = ["plots"]
