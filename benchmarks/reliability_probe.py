"""The reliability probe (#31): the command line tried as a new user and a careless operator
would, every outcome sorted into a bucket by what happened, not by what was hoped.

Classes of input, on tiny models (the digits MLP):
- **numbers**: every numeric option of every command and subcommand (walked from the parser)
  and the number lists (``--budget``, ``--budgets``, a DP sweep's ``--lr``/``--clip``) at 0, -1,
  NaN, inf and 10^9 (that last only where it is refused, or for --batch, --workers, --images
  and --limit);
- **files**: every argument that names a run folder or a file, given a missing path, an empty
  folder, a plain file, a folder with a binary config.yaml, a run whose model.pt is random
  bytes, an empty file, a binary file, a foreign JSON file;
- **protect**: outputs aimed at an existing run's files (report, train, linearize, dp-train);
- **process**: Ctrl-C, SIGKILL and SIGTERM of a training run, resumed and compared bit for bit
  with an uninterrupted run; two writers on one folder;
- **moved**: a tree of runs moved elsewhere, then eval, audit, report, mitigate, polyfit and
  linearize --resume on it.

Buckets: ``refused`` (exit 2, a one-line message, no run folder left), ``refused, stub left``,
``traceback``, ``accepted`` (a value its declaration allows ran to exit 0: as designed),
``accepted a bad value`` (exit 0 on what should be refused), ``data loss`` (an existing run's
files changed), ``recovered`` (resume, concurrency or moved tree right), ``failed`` (one of
those wrong), ``still running`` (an accepted value ran past the time limit).

    python benchmarks/reliability_probe.py [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results  # noqa: E402
from pifair.cli import build_parser, main  # noqa: E402
from pifair.cli.flags import declared_bounds, numeric_options  # noqa: E402
from pifair.config_types import within_bounds  # noqa: E402

PIFAIR = [sys.executable, "-m", "pifair"]
HERE = Path.cwd()
VALUES = ["0", "-1", "nan", "inf", "1000000000"]
QUICK = {"--epochs": "1", "--search-epochs": "1", "--finetune-epochs": "1"}
# the rest of a valid command line per command ({out}: the folder that must not appear)
VALID: dict[tuple[str, ...], list[str]] = {
    ("train",): ["--data", "digits", "--model", "mlp", "--epochs", "1", "--out", "{out}"],
    ("dp-train",): [
        *("--data", "digits", "--model", "mlp", "--method", "dpsgd", "--epsilon", "3"),
        *("--epochs", "1", "--out", "{out}"),
    ],
    ("import",): [
        *("--arch", "torchvision:resnet18", "--weights", "runs/dense/model.pt", "--data"),
        *("digits", "--out", "{out}"),
    ],
    ("demo",): ["--out", "{out}", "--limit", "200", "--epochs", "1"],
    ("relus",): ["--model", "mlp", "--input-shape", "64"],
    ("cost",): ["--model", "mlp", "--input-shape", "64"],
    ("linearize",): [
        *("--from", "runs/dense", "--budget", "100", "--search-epochs", "1"),
        *("--finetune-epochs", "1", "--out", "{out}"),
    ],
    ("sweep", "linearize"): [
        *("--from", "runs/dense", "--budgets", "100", "--search-epochs", "1"),
        *("--finetune-epochs", "1", "--out", "{out}"),
    ],
    ("sweep", "share"): [
        *("--from", "runs/dense", "--budgets", "100", "--search-epochs", "1"),
        *("--finetune-epochs", "1", "--out", "{out}"),
    ],
    ("sweep", "dp-train"): [
        *("--data", "digits", "--model", "mlp", "--method", "dpsgd", "--epsilon", "3"),
        *("--epochs", "1", "--lr", "0.1", "--clip", "1", "--out", "{out}"),
    ],
    ("share",): ["--from", "runs/dense", "--budget", "100", "--finetune-epochs", "1"]
    + ["--out", "{out}"],
    ("polyfit",): ["--from", "runs/dense", "--finetune-epochs", "1", "--out", "{out}"],
    ("mitigate",): ["--from", "runs/lin", "--epochs", "1", "--out", "{out}"],
    ("audit",): ["runs/dense", "runs/lin", "--out", "{out}"],
    ("he-infer",): ["--from", "runs/poly", "--images", "64", "--out", "{out}"],
    ("he-serve",): ["{out}"],
    ("mpc-infer",): ["--from", "runs/dense", "--images", "2", "--out", "{out}"],
}
NUMBER_LISTS = {
    ("linearize",): ["--budget"],
    ("share",): ["--budget"],
    ("sweep", "linearize"): ["--budgets"],
    ("sweep", "dp-train"): ["--lr", "--clip"],
}
ANY_VALUE = {"seed"}
# counts whose huge value is tried (a huge count of epochs runs for ever, as asked)
HUGE_TRIED = {"--batch", "--workers", "--images", "--limit"}
TIME_LIMIT = 120.0


@dataclass
class Case:
    """One command line and what it should do."""

    kind: str  # numbers, files, protect, process, moved
    name: str
    argv: list[str]
    expect: str  # "refuse" or "succeed"
    out: str | None = None  # a folder that must not exist after a refusal
    protected: list[str] = field(default_factory=list)  # folders whose files must not change
    bucket: str = ""
    message: str = ""


def _digest(folder: str) -> dict[str, str]:
    """The hash of every file in ``folder`` (a command may add files, such as eval's results;
    it must not change or delete one)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.name not in ("log.txt", ".lock")
    }


def _changed(folder: str) -> bool:
    now = _digest(folder)
    return any(now.get(path) != digest for path, digest in BEFORE[folder].items())


def _refuses(bounds: dict[str, float], text: str) -> bool:
    return not within_bounds(float(text), bounds)


def _parses(action: argparse.Action, text: str) -> bool:
    try:
        action.type(text)  # type: ignore[misc]
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


def _with(rest: list[str], flag: str, value: str) -> list[str]:
    """``rest`` with ``flag value`` (replacing the flag's quick value when it has one)."""
    out, skip = [], False
    for i, a in enumerate(rest):
        if skip:
            skip = False
            continue
        if a == flag and i + 1 < len(rest):
            skip = True
            continue
        out.append(a)
    return [*out, flag, value]


def number_cases() -> list[Case]:
    cases = []
    seen = set()
    for path, action in numeric_options(build_parser()):
        flag = action.option_strings[-1]
        if action.dest in ANY_VALUE or (path, flag) in seen:
            continue
        seen.add((path, flag))
        bounds = declared_bounds(action) or {}
        for value in VALUES:
            refuse = _refuses(bounds, value) or not _parses(action, value)
            if value == VALUES[-1] and not refuse and (flag not in HUGE_TRIED or path == ("demo",)):
                continue  # a huge count of epochs runs for ever, as asked
            out = f"out/{'-'.join(path)}{flag}{value}"
            argv = [*path, *_with([a.format(out=out) for a in VALID[path]], flag, value)]
            cases.append(
                Case(
                    "numbers",
                    " ".join([*path, flag, value]),
                    argv,
                    "refuse" if refuse else "run",
                    out,
                )
            )
    for path, flags in NUMBER_LISTS.items():
        for flag in flags:
            for value in VALUES:
                out = f"out/{'-'.join(path)}{flag}{value}"
                argv = [*path, *_with([a.format(out=out) for a in VALID[path]], flag, value)]
                rates = flag in ("--lr", "--clip")  # any positive rate or bound is allowed
                huge = value == VALUES[-1]
                expect = "run" if (value == "0" and not rates) or (huge and rates) else "refuse"
                if path == ("share",) and value == "0":
                    expect = "refuse"  # the coarsest grouping keeps one decision per site
                cases.append(Case("numbers", " ".join([*path, flag, value]), argv, expect, out))
    return cases


def file_cases() -> list[Case]:
    folders = {
        "missing": "bad/missing",
        "empty folder": "bad/empty",
        "a plain file": "bad/plain.txt",
        "binary config.yaml": "bad/binconfig",
        "random model.pt": "bad/randmodel",
        "truncated metrics.json": "bad/truncmetrics",
    }
    files = {
        "missing": "bad/missing.yaml",
        "empty file": "bad/empty.yaml",
        "binary file": "bad/binary.bin",
        "foreign JSON": "bad/foreign.json",
        "a folder": "bad/empty",
    }
    takes_folder = {
        "eval": lambda x: ["eval", x],
        "report": lambda x: ["report", x, "--out", "out/report-{k}.html"],
        "linearize --from": lambda x: ["linearize", "--from", x, "--budget", "10", "--out", "{o}"],
        "share --from": lambda x: ["share", "--from", x, "--budget", "100", "--out", "{o}"],
        "polyfit --from": lambda x: ["polyfit", "--from", x, "--out", "{o}"],
        "mitigate --from": lambda x: ["mitigate", "--from", x, "--out", "{o}"],
        "audit": lambda x: ["audit", "runs/dense", x, "--out", "{o}"],
        "he-infer --from": lambda x: ["he-infer", "--from", x, "--out", "{o}"],
        "mpc-infer --from": lambda x: ["mpc-infer", "--from", x, "--images", "2", "--out", "{o}"],
        "cost": lambda x: ["cost", x],
        "relus": lambda x: ["relus", x],
        "train --resume": lambda x: ["train", "--resume", x],
        "linearize --resume": lambda x: ["linearize", "--resume", x],
        "he-serve": lambda x: ["he-serve", x],
        "cost --calibrate": lambda x: ["cost", "runs/dense", "--calibrate", x],
    }
    takes_file = {
        "train --config": lambda x: ["train", "--config", x, "--out", "{o}"],
        "dp-train --config": lambda x: ["dp-train", "--config", x, "--out", "{o}"],
        "linearize --config": lambda x: ["linearize", "--config", x, "--out", "{o}"],
        "mpc-infer --config": lambda x: ["mpc-infer", "--config", x, "--out", "{o}"],
        "cost --calibration": lambda x: ["cost", "runs/dense", "--calibration", x],
        "import --weights": lambda x: [
            *("import", "--arch", "torchvision:resnet18", "--weights", x, "--data", "digits"),
            *("--out", "{o}"),
        ],
    }
    cases = []
    for table, inputs in ((takes_folder, folders), (takes_file, files)):
        for what, build in table.items():
            for k, (label, path) in enumerate(inputs.items()):
                out = f"out/files-{what.replace(' ', '').replace('-', '')}-{k}"
                argv = [a.format(o=out, k=k) for a in build(path)]
                # a command that does not read the broken file may run (or refuse)
                either = label == "truncated metrics.json" or (
                    label == "random model.pt" and what == "report"
                )
                expect = "either" if either else "refuse"
                cases.append(Case("files", f"{what}: {label}", argv, expect, out))
    return cases


def protect_cases() -> list[Case]:
    report = ["report", "runs/dense", "--out"]
    return [
        Case(
            "protect",
            "report --out RUN/model.pt",
            [*report, "runs/dense/model.pt"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "report --out RUN/metrics.json",
            [*report, "runs/dense/metrics.json"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "report --out RUN/config.yaml",
            [*report, "runs/dense/config.yaml"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "report --out RUN",
            [*report, "runs/dense"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "report --out a foreign file",
            [*report, "bad/foreign.json"],
            "refuse",
            protected=["bad"],
        ),
        Case(
            "protect",
            "train --out a finished run",
            ["train", "--data", "digits", "--model", "mlp", "--out", "runs/dense"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "linearize --out a finished run",
            ["linearize", "--from", "runs/dense", "--budget", "10", "--out", "runs/lin"],
            "refuse",
            protected=["runs/lin"],
        ),
        Case(
            "protect",
            "dp-train --out a train run",
            [
                "dp-train",
                "--data",
                "digits",
                "--model",
                "mlp",
                "--method",
                "dpsgd",
                "--epsilon",
                "3",
                "--out",
                "runs/dense",
            ],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "train --resume a finished run",
            ["train", "--resume", "runs/dense"],
            "refuse",
            protected=["runs/dense"],
        ),
        Case(
            "protect",
            "he-serve on a finished run folder",
            ["he-serve", "runs/dense"],
            "refuse",
            protected=["runs/dense"],
        ),
    ]


def moved_cases() -> list[Case]:
    m = "moved/runs"
    return [
        Case("moved", "eval a moved linearize run", ["eval", f"{m}/lin"], "succeed"),
        Case(
            "moved",
            "audit on a moved tree",
            ["audit", f"{m}/dense", f"{m}/lin", "--out", "out/moved-audit"],
            "succeed",
        ),
        Case(
            "moved",
            "report on a moved tree",
            ["report", f"{m}/dense", f"{m}/lin", "--out", "out/moved.html"],
            "succeed",
        ),
        Case(
            "moved",
            "mitigate from a moved run",
            ["mitigate", "--from", f"{m}/lin", "--epochs", "1", "--out", "out/moved-mitigate"],
            "succeed",
        ),
        Case(
            "moved",
            "polyfit from a moved run",
            ["polyfit", "--from", f"{m}/lin", "--finetune-epochs", "1", "--out", "out/moved-poly"],
            "succeed",
        ),
        Case(
            "moved",
            "linearize --resume of a moved killed run",
            ["linearize", "--resume", f"{m}/killed-lin"],
            "succeed",
        ),
        Case("moved", "cost of a moved run", ["cost", f"{m}/lin"], "succeed"),
    ]


# ---- running ----------------------------------------------------------------------------------
def _in_process(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = int(stop.code or 0)
        except Exception:  # a bug: main lets it through with its traceback
            import traceback

            traceback.print_exc(file=err)
            code = 1
    return code, err.getvalue()


def _subprocess(argv: list[str], timeout: float = TIME_LIMIT) -> tuple[int | None, str]:
    try:
        done = subprocess.run(
            [*PIFAIR, *argv, "--no-progress"] if _has_progress(argv) else [*PIFAIR, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stderr


def _has_progress(argv: list[str]) -> bool:
    return argv[0] in {"train", "dp-train", "linearize", "sweep", "share", "polyfit", "mitigate"}


def classify(case: Case, code: int | None, err: str) -> None:
    changed = [p for p in case.protected if _changed(p)]
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    case.message = (lines[-1] if lines else err.strip())[:300]
    if changed:
        case.bucket = "data loss"
    elif "Traceback" in err:
        case.bucket = "traceback"
    elif code is None:
        case.bucket = "still running"
    elif case.expect == "refuse":
        if code == 0:
            case.bucket = "accepted a bad value"
        elif case.out and Path(case.out).exists():
            case.bucket = "refused, stub left"
        elif len(lines) == 1 and code == 2:
            case.bucket = "refused"
        else:
            case.bucket = "unclear failure"
    elif case.expect == "either" and code in (0, 2):
        case.bucket = "accepted" if code == 0 else "refused"
    elif case.expect in ("run", "either"):
        case.bucket = "accepted" if code == 0 else ("refused" if code == 2 else "failed")
    else:
        case.bucket = "recovered" if code == 0 else "failed"


BEFORE: dict[str, dict[str, str]] = {}


def setup(root: Path) -> None:
    """The runs the cases read: a dense MLP, a linearized and a polynomial model, broken
    inputs, a moved tree with a killed linearize run in it."""
    os.chdir(root)
    first = "first/runs"  # made here, then moved: every saved absolute path is gone
    for argv in (
        ["train", "--data", "digits", "--model", "mlp", "--epochs", "2", "--out", f"{first}/dense"],
        [
            "linearize",
            "--from",
            f"{first}/dense",
            "--budget",
            "100",
            "--search-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--out",
            f"{first}/lin",
        ],
        ["polyfit", "--from", f"{first}/dense", "--finetune-epochs", "1", "--out", f"{first}/poly"],
    ):
        code, err = _in_process([*argv, "--no-progress"])
        assert code == 0, err
    shutil.copytree(root / first / "lin", root / first / "killed-lin")
    (root / first / "killed-lin" / "model.pt").unlink()  # as if killed before its model
    shutil.move(root / "first", root / "moved")
    shutil.copytree(root / "moved" / "runs", root / "runs")
    bad = root / "bad"
    (bad / "empty").mkdir(parents=True)
    (bad / "plain.txt").write_text("not a run\n")
    (bad / "empty.yaml").write_text("")
    (bad / "binary.bin").write_bytes(os.urandom(512))
    (bad / "foreign.json").write_text('{"hello": [1, 2, 3]}')
    (bad / "binconfig").mkdir()
    (bad / "binconfig" / "config.yaml").write_bytes(os.urandom(256))
    shutil.copytree(root / "runs/dense", bad / "randmodel")
    (bad / "randmodel" / "model.pt").write_bytes(os.urandom(4096))
    shutil.copytree(root / "runs/dense", bad / "truncmetrics")
    metrics = bad / "truncmetrics" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    for folder in ("runs/dense", "runs/lin", "bad"):
        BEFORE[folder] = _digest(folder)


def process_cases(root: Path) -> list[Case]:
    """Signals mid-run, resumed, against an uninterrupted run; two writers on one folder."""
    base = ["train", "--data", "digits", "--model", "mlp", "--epochs", "6", "--no-progress"]
    out = []
    code, err = _subprocess([*base, "--out", "proc/clean"], timeout=600)
    reference = (root / "proc/clean/model.pt").read_bytes() if code == 0 else b""
    for name, sig in (
        ("Ctrl-C", signal.SIGINT),
        ("SIGKILL", signal.SIGKILL),
        ("SIGTERM", signal.SIGTERM),
    ):
        folder = root / f"proc/{name}"
        proc = subprocess.Popen(
            [*PIFAIR, *base, "--out", str(folder)], stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 300
        while not (folder / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(sig)
        _, killed_err = proc.communicate(timeout=120)
        code, err = _subprocess(["train", "--resume", str(folder)], timeout=600)
        same = code == 0 and (folder / "model.pt").read_bytes() == reference
        case = Case("process", f"{name} mid-training, then --resume: bit-exact", [], "succeed")
        case.bucket = "recovered" if same else "failed"
        case.message = killed_err.strip().splitlines()[-1][:200] if killed_err.strip() else ""
        out.append(case)
    folder = root / "proc/two"
    procs = [
        subprocess.Popen(
            [*PIFAIR, *base, "--out", str(folder), "--seed", str(s)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (1, 2)
    ]
    codes = sorted(p.wait(timeout=600) for p in procs)
    case = Case("process", "two train commands on one folder", [], "succeed")
    case.bucket = "recovered" if codes == [0, 2] else "failed"
    case.message = f"exit codes {codes}"
    out.append(case)
    return out


def run(workers: int) -> list[Case]:
    root = Path(tempfile.mkdtemp(prefix="pifair-probe-"))
    setup(root)
    cases = number_cases() + file_cases() + protect_cases() + moved_cases()
    fast = [c for c in cases if c.expect == "refuse"]
    slow = [c for c in cases if c.expect != "refuse"]  # these may run: in subprocesses
    for case in fast:  # refusals: in this process, one after another (seconds each)
        classify(case, *_in_process(case.argv))
    with ThreadPoolExecutor(workers) as pool:  # what runs: subprocesses with a time limit
        for case, (code, err) in zip(slow, pool.map(lambda c: _subprocess(c.argv), slow)):
            classify(case, code, err)
    cases += process_cases(root)
    os.chdir(HERE)
    shutil.rmtree(root, ignore_errors=True)
    return cases


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="list the cases, run none")
    args = parser.parse_args()
    if args.list:
        cases = number_cases() + file_cases() + protect_cases() + moved_cases()
        for c in cases:
            print(c.kind, c.expect, " ".join(c.argv))
        return
    start = time.time()
    cases = run(args.workers)
    buckets = sorted({c.bucket for c in cases})
    kinds = ["numbers", "files", "protect", "process", "moved"]
    counts = [
        [
            k,
            *(sum(c.kind == k and c.bucket == b for c in cases) for b in buckets),
            sum(c.kind == k for c in cases),
        ]
        for k in kinds
    ]
    counts.append(["all", *(sum(c.bucket == b for c in cases) for b in buckets), len(cases)])
    header = ["class", *buckets, "cases"]
    print_table(header, counts)
    good = {"refused", "accepted", "recovered"}
    odd = [[c.kind, c.name, c.bucket, c.message] for c in cases if c.bucket not in good]
    if odd:
        print()
        print_table(["class", "case", "bucket", "message"], odd)
    wall = time.time() - start
    summary = [
        f"{len(cases)} cases in {wall / 60:.1f} min: "
        + ", ".join(f"{b} {sum(c.bucket == b for c in cases)}" for b in buckets)
    ]
    print(summary[0])
    save_results(
        "reliability_probe",
        tables={
            "outcomes per class of input": (header, counts),
            "every case outside refused, accepted and recovered": (
                ["class", "case", "bucket", "message"],
                odd,
            ),
        },
        summary=summary,
        data={"cases": [[c.kind, c.name, c.argv, c.expect, c.bucket, c.message] for c in cases]},
        setting={"values": VALUES, "time_limit_s": TIME_LIMIT},
    )


if __name__ == "__main__":
    main_()
