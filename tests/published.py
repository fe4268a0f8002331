"""The published record: results files under `benchmarks/results/` and the Markdown that quotes them, read the way
the documents write them. Shared by the tests that tie a document's numbers to their results files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@cache
def results(name: str) -> dict:
    """A results file of `benchmarks/results/`, parsed once per test session."""
    return json.loads((RESULTS / name).read_text())


def document(name: str) -> str:
    """A Markdown file of the repository (`README.md`, `docs/BENCHMARKS.md`, ...)."""
    return (REPO / name).read_text(encoding="utf-8")


def between(text: str, start: str, end: str) -> str:
    """The part of `text` from `start` up to the first `end` after it."""
    begin = text.index(start)
    return text[begin:text.index(end, begin)]


def flat(text: str) -> str:
    """`text` with every run of whitespace as one space, so that a sentence matches across the prose's line breaks."""
    return " ".join(text.split())


def mean_std(values, digits: int = 3) -> str:
    """`mean ± std` over seeds (sample std, n - 1), as the documents write it."""
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def seed_dice(name: str, task: str, method: str) -> list[float]:
    """Test Dice of every seed of `method` on `task` in the accuracy-style results file `name`."""
    dice = [r["dice"] for r in results(name)["records"] if r["dataset"] == task and r["method"] == method]
    if not dice:
        raise KeyError(f"{name} has no test record of {method} on {task}")
    return dice
