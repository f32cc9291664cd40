"""Plots and the self-contained HTML report."""

from . import dp_section, fairness_section, he_section, linearize_section, plots, poly_section  # noqa: F401  (sections register themselves)
from .html import SECTIONS, build_report, register_section

__all__ = ["SECTIONS", "build_report", "plots", "register_section"]
