"""Smoke test of ``benchmarks/bench_cli.py`` (the harness, not crmef's speed): a stand-in for crmef
that copies its first frame to ``-o``, so the test stays small whatever the fusion costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cli.py"

STUB = """import shutil, sys
a = sys.argv[1:]
if "-o" in a:
    shutil.copyfile(a[1], a[a.index("-o") + 1])
"""


def test_bench_cli_quick(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeats", "1", "--jobs", "help,pair1",
         "--crmef", f"{sys.executable} {stub}", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| job | crmef s | crmef peak MB | tool | tool s | tool peak MB | ratio |" in proc.stdout
    result = json.loads(out.read_text())
    jobs = {(r["job"], r["tool"]) for r in result["rows"]}
    assert ("help", 'python -c "import cv2"') in jobs and ("pair1", "Mertens script") in jobs
    assert all(r["crmef_s"] > 0 and r["tool_s"] > 0 and r["ratio"] > 0 for r in result["rows"])
    assert not result["errors"]
