"""Plots and the self-contained HTML report."""

# the section modules register themselves on import
from . import (  # noqa: F401
    dp_section,
    fairness_section,
    he_section,
    import_section,
    linearize_section,
    mpc_section,
    plots,
    poly_section,
)
from .html import SECTIONS, build_report, default_report_path, register_section

__all__ = ["SECTIONS", "build_report", "default_report_path", "plots", "register_section"]
