"""The scaling benchmark end to end on a tiny SAM (`--smoke`): real launches at one and two processes, throughput read
from each run's own files, and the rendered section."""

from __future__ import annotations

import json

import pytest

from benchmarks import scaling


@pytest.mark.slow
def test_smoke_launches_every_setup_and_renders_the_report(tmp_path):
    output, report_path = tmp_path / "results" / "scaling_smoke.json", tmp_path / "BENCHMARKS.md"
    report = scaling.main(["--smoke", "--work_dir", str(tmp_path / "work"), "--output", str(output),
                           "--report_path", str(report_path)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    rows = {row["name"]: row for row in report["setups"]}
    assert [row["num_processes"] for row in report["setups"]] == [1, 1, 2, 2]  # as each run recorded it
    assert rows["2 processes x 1 thread"]["distributed_type"] == "MULTI_CPU"
    assert rows["2 processes x 1 thread"]["global_batch"] == 4
    assert rows["2 processes x 1 thread, same global batch"]["global_batch"] == 2
    assert all(row["samples_per_second"] > 0 for row in rows.values())
    assert rows["1 process x 1 thread"]["ratio_to_first"] == 1.0
    text = report_path.read_text()
    assert text.count(scaling.MARK_BEGIN) == 1 and "| 2 processes x 1 thread | 2 | 1 | 2 | 4 |" in text


def test_the_published_section_is_the_results_files():
    """docs/BENCHMARKS.md's scaling section is what the recorded results render to, and the prose's ratios are
    theirs."""
    text = scaling.REPORT_PATH.read_text()
    section = text[text.index(scaling.MARK_BEGIN): text.index(scaling.MARK_END) + len(scaling.MARK_END)]
    reports = {path.stem: json.loads(path.read_text()) for path in sorted(scaling.RESULTS.glob("scaling_*.json"))}
    assert section + "\n" == scaling.render(reports)
    ratios = {row["name"]: row["ratio_to_first"] for row in reports["scaling_cpu"]["setups"]}
    prose = text[text.index("## Many processes: what the measurements say"): text.index(scaling.MARK_BEGIN)]
    assert f"train {ratios['2 processes x 1 thread']:.2f}x the samples per second" in prose
    assert f"the gain is {ratios['2 processes x 1 thread, same global batch']:.2f}x" in prose
    assert f"through threads gains {ratios['1 process x 2 threads']:.2f}x" in prose
