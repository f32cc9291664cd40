"""Every number README's "Measured" table states comes from a results file in
``benchmarks/results/`` that a command wrote: a stale or hand-edited figure fails here.

A value with its spread (``85.36 ± 0.05``, ``-0.19 [-0.51, +0.13]``) must stand together in one
cell or summary line of the file: small numbers such as 0.05 occur all over a results file, so
matching them one by one anywhere would let a wrong spread through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

# a number, with its sign when one stands before it, and an exponent; not digits inside words
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
_LINK = re.compile(r"\((benchmarks/results/[\w.-]+\.json)\)")
_N = r"[-+]?\d[\d,]*(?:\.\d+)?"
# a value and its spread: "x ± s" or "x [lo, hi]"
_SPREAD = re.compile(rf"(?<![\w.])({_N})\s*%?\s*(?:±\s*({_N})|\[\s*({_N}),\s*({_N})\s*\])")


def spreads(text: str) -> set[tuple[str, ...]]:
    """Each value quoted with its spread, as the tuple of its numbers (as written)."""
    out = set()
    for match in _SPREAD.finditer(text):
        out.add(tuple(g.replace(",", "").lstrip("+") for g in match.groups() if g is not None))
    return out


def _cells(record: dict) -> list[str]:
    """Every table cell and summary line of a results file."""
    cells = [str(c) for table in record["tables"].values() for row in table["rows"] for c in row]
    return cells + list(record["summary"])


def numbers(text: str) -> set[str]:
    """The numbers of ``text`` as written (thousands separators and a plus sign dropped)."""
    out = set()
    for token in _NUMBER.findall(text):
        token = token.replace(",", "").lstrip("+")
        out.add(f"{float(token):.3g}" if "e" in token else token)
    return out


def measured_rows(readme: str) -> list[dict[str, str]]:
    """The rows of the table under '## Measured' as dicts keyed by the header's cells."""
    section = readme.split("\n## Measured", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]
    ]


def problems(readme: str, results: Path) -> list[str]:
    """What does not match between README's Measured table and the results files."""
    out = []
    rows = measured_rows(readme)
    if not rows:
        return ["README has no Measured table"]
    for row in rows:
        what = row.get("what", "?")[:50]
        link = _LINK.search(row.get("results file", ""))
        if not link:
            out.append(f"{what}: no results file named")
            continue
        path = results / Path(link.group(1)).name
        if not path.exists():
            out.append(f"{what}: {link.group(1)} does not exist")
            continue
        record = json.loads(path.read_text())
        if record["tree"] != "clean":
            out.append(f"{what}: {path.name} was written by uncommitted code")
        if row.get("machine") != record["machine_class"]:
            out.append(
                f"{what}: machine {row.get('machine')!r} but {path.name} ran on "
                f"{record['machine_class']!r}"
            )
        if row.get("command", "").strip("`") != record["command"]:
            out.append(
                f"{what}: command {row.get('command')!r} but {path.name} was written by "
                f"{record['command']!r}"
            )
        source = json.dumps(record["tables"]) + " " + " ".join(record["summary"])
        missing = numbers(row.get("result", "")) - numbers(source)
        if missing:
            out.append(f"{what}: {sorted(missing)} not in {path.name}")
        together = set().union(*(spreads(c) for c in _cells(record)))
        apart = spreads(row.get("result", "")) - together
        if apart:
            out.append(f"{what}: {sorted(apart)} not together in one cell of {path.name}")
    return out


def test_every_readme_number_comes_from_its_results_file():
    assert problems(README.read_text(), RESULTS) == []


def test_an_edited_number_or_a_missing_file_fails(tmp_path):
    readme = README.read_text()
    row = measured_rows(readme)[0]
    number = sorted(numbers(row["result"]))[0]
    edited_cell = re.sub(
        rf"(?<![\d.]){re.escape(number)}(?![\d])", "987.65", row["result"], count=1
    )
    assert edited_cell != row["result"]
    edited = readme.replace(row["result"], edited_cell, 1)
    assert any("987.65" in p for p in problems(edited, RESULTS))
    for f in RESULTS.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    name = _LINK.search(row["results file"]).group(1).split("/")[-1]
    (tmp_path / name).unlink()
    assert any("does not exist" in p for p in problems(readme, tmp_path))


def test_a_wrong_spread_fails_even_when_its_number_is_elsewhere_in_the_file():
    """The spread of one value swapped for another's: each number exists in the file, the pair
    does not."""
    readme = README.read_text()
    for row in measured_rows(readme):
        pairs = sorted(p for p in spreads(row["result"]) if len(p) == 2)
        if len(pairs) >= 2 and pairs[0][1] != pairs[1][1]:
            break
    else:
        pytest.skip("no row quotes two values with different spreads")
    (value, spread), (_, other) = pairs[0], pairs[1]
    cell = re.sub(
        rf"{re.escape(value)}(\s*%?\s*)±\s*{re.escape(spread)}",
        rf"{value}\1± {other}",
        row["result"],
        count=1,
    )
    assert cell != row["result"]
    assert any(
        "not together" in p for p in problems(readme.replace(row["result"], cell, 1), RESULTS)
    )


def test_spreads_are_read_as_written():
    assert spreads("DPSGD 85.36 ± 0.05 %, Global -0.19 [-0.51, +0.13], 9-11 %") == {
        ("85.36", "0.05"),
        ("-0.19", "-0.51", "0.13"),
    }


def test_numbers_are_read_as_written():
    assert numbers("91.42 % (1,000 ReLUs), 1.18x, -5.50 ± 0.30, 9-11 %, 1.3e-05, ResNet18") == {
        "91.42",
        "1000",
        "1.18",
        "-5.50",
        "0.30",
        "9",
        "11",
        "1.3e-05",
    }
