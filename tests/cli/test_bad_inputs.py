"""Every numeric flag of every command at NaN, inf, a negative value and zero, generated from the
settings' declarations: a value the declaration refuses is refused in one line that names the
setting, before any run folder exists; a numeric setting declares its bounds (or is listed below
as taking any value)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pifair.cli import main
from pifair.cli.flags import Flag, dataclass_flags, declared_field, declared_type
from pifair.cli.tables import (
    FINETUNE_FLAGS,
    HE_FLAGS,
    MITIGATE_FLAGS,
    MPC_FLAGS,
    POLYFIT_FLAGS,
    SHARE_FLAGS,
    audit_flags,
    linearize_flags,
)
from pifair.config_types import without_none
from pifair.dp import DPConfig
from pifair.training import TrainConfig
from pifair.workflows.fairness import AuditJob, MitigateJob
from pifair.workflows.he import HEInferJob
from pifair.workflows.linearize import LinearizeJob
from pifair.workflows.mpc import MPCInferJob
from pifair.workflows.polyfit import PolyfitJob
from pifair.workflows.share import ShareJob

# (settings class, its flags, the rest of a valid command line; {run} is a finished run)
COMMANDS: dict[str, tuple[type, list[Flag], list[str]]] = {
    "train": (TrainConfig, dataclass_flags(TrainConfig), ["--data", "digits", "--model", "mlp"]),
    "dp-train": (
        DPConfig,
        dataclass_flags(DPConfig),
        ["--data", "digits", "--model", "mlp", "--method", "dpsgd", "--epsilon", "3"],
    ),
    "linearize": (LinearizeJob, linearize_flags(sweep=None), ["--from", "{run}", "--budget", "10"]),
    "share": (ShareJob, SHARE_FLAGS + FINETUNE_FLAGS, ["--from", "{run}", "--budget", "10"]),
    "polyfit": (PolyfitJob, POLYFIT_FLAGS + FINETUNE_FLAGS, ["--from", "{run}"]),
    "mitigate": (MitigateJob, MITIGATE_FLAGS, ["--from", "{run}"]),
    "audit": (AuditJob, audit_flags(), ["{run}", "{run}"]),
    "he-infer": (HEInferJob, HE_FLAGS, ["--from", "{run}"]),
    "mpc-infer": (MPCInferJob, MPC_FLAGS, ["--from", "{run}"]),
}
# numeric settings that take any value (a seed is any integer)
ANY_VALUE = {"seed"}
BAD = ["nan", "inf", "-1", "0"]


def _numeric(cls: type, flag: Flag) -> dataclasses.Field | None:
    """The field ``flag`` sets, when it is a number."""
    numeric = without_none(declared_type(cls, flag.paths[0])) in (int, float)
    return declared_field(cls, flag.paths[0]) if numeric and flag.parse is None else None


def _refused(field: dataclasses.Field, text: str) -> bool:
    """Whether the declaration refuses ``text`` (a float that is not finite, or out of bounds)."""
    value = float(text)
    if not math.isfinite(value):
        return True
    bounds = field.metadata.get("bounds", {})
    checks = {
        "ge": lambda b: value >= b,
        "gt": lambda b: value > b,
        "le": lambda b: value <= b,
        "lt": lambda b: value < b,
    }
    return not all(checks[k](b) for k, b in bounds.items())


CASES = [
    pytest.param(command, flag.name, text, id=f"{command} {flag.name} {text}")
    for command, (cls, flags, _) in COMMANDS.items()
    for flag in flags
    if (field := _numeric(cls, flag)) is not None and field.name not in ANY_VALUE
    for text in BAD
    if _refused(field, text)
]


def test_every_numeric_setting_declares_its_bounds():
    undeclared = sorted(
        {
            f"{command} {flag.name}"
            for command, (cls, flags, _) in COMMANDS.items()
            for flag in flags
            if (field := _numeric(cls, flag)) is not None
            and field.name not in ANY_VALUE
            and not field.metadata.get("bounds")
        }
    )
    assert not undeclared, undeclared


@pytest.mark.parametrize("command, flag, text", CASES)
def test_a_value_the_declaration_refuses_is_refused_before_any_folder(
    command, flag, text, digits_mlp_run, tmp_path, capsys
):
    _, _, rest = COMMANDS[command]
    out = tmp_path / "out"
    argv = [command, *(a.format(run=digits_mlp_run) for a in rest), flag, text, "--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: "nan" is not an integer
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err and not out.exists()
    name = flag.lstrip("-").replace("-", "_")
    assert "Traceback" not in err and (name.split("_")[-1] in err or "invalid" in err), err


def test_the_table_covers_every_command_with_numeric_flags():
    assert len(CASES) > 100 and {c.values[0] for c in CASES} == set(COMMANDS)
