"""Plots and the self-contained HTML report."""

from . import plots
from .html import SECTIONS, build_report, register_section

__all__ = ["SECTIONS", "build_report", "plots", "register_section"]
