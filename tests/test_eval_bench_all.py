"""scripts/bench_all.py: runs every bench script, collects its final JSON line, survives failures and timeouts,
and writes the benchmark report with targets and the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_ALL = Path(__file__).resolve().parent.parent / "scripts" / "bench_all.py"

SCRIPTS = {
    "bench_record.py": """
import json, sys
print("human-readable line")
print(json.dumps({"bench": "record", "quick": "--quick" in sys.argv, "throughput_ratio_float32": 0.96,
                  "throughput_ratio_bfloat16": 0.93, "memory_ratio": 1.25, "nested": {"windows_per_s": 12.5}}))
""",
    "bench_db.py": """
import sys
print("about to fail")
sys.stderr.write("Traceback...\\nRuntimeError: database exploded\\n")
sys.exit(3)
""",
    "bench_quiet.py": "print('no json here')\n",
    "bench_slow.py": "import time\ntime.sleep(120)\n",
    "helper.py": "raise SystemExit('not a bench script: never run')\n",
}


def test_bench_all_collects_results_targets_failures_and_timeouts(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)
    out, results = tmp_path / "benchmarks.md", tmp_path / "results.json"
    completed = subprocess.run([sys.executable, str(BENCH_ALL), "--quick", "--scripts", str(scripts), "--timeout", "3",
                                "--out", str(out), "--json", str(results)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "all" and summary == json.loads(results.read_text())
    by_script = {result["script"]: result for result in summary["results"]}
    assert set(by_script) == {"bench_record.py", "bench_db.py", "bench_quiet.py", "bench_slow.py"}
    record = by_script["bench_record.py"]
    assert record["figures"]["quick"] is True and "error" not in record and record["peak_rss_mib"] > 0
    assert by_script["bench_db.py"]["error"] == "exit code 3: RuntimeError: database exploded"
    assert "no final JSON line" in by_script["bench_quiet.py"]["error"]
    assert by_script["bench_slow.py"]["error"] == "timed out after 3 s" and by_script["bench_slow.py"]["seconds"] < 30
    assert summary["machine"]["cpu_count"] >= 1 and "python" in summary["machine"]

    report = out.read_text()
    assert "## Machine" in report and "with `--quick`" in report
    short = "| record | recording throughput / bare forward pass, short count (640 / 192 windows)"
    assert f"{short}, float32 (worst layer set) | 0.96 | >= 0.95 | yes |" in report
    assert f"{short}, bfloat16 (worst layer set) | 0.93 | >= 0.95 | **no** |" in report
    assert "| record | recorder peak RSS at 4N windows / at N windows | 1.25 | <= 1.10 | **no** |" in report
    assert "| db | filtered, sorted top-50 query (ms; database size under db below) | (failed) |" in report
    assert "| llm | local slot simulator: batched + prefix-cached vs naive | (not run) |" in report
    assert "| nested.windows_per_s | 12.5 |" in report
    assert "| bench_db.py |" in report and "database exploded" in report

    again = tmp_path / "again.md"
    subprocess.run([sys.executable, str(BENCH_ALL), "--from-json", str(results), "--out", str(again)], check=True,
                   capture_output=True, timeout=60)
    assert again.read_text() == report

    # A regenerated report keeps the hand-written analyses after the marker.
    notes = "<!-- hand-written below: bench_all.py keeps everything after this line -->\n## Sizes\n\nmeasured by hand\n"
    again.write_text("stale generated part\n\n" + notes)
    subprocess.run([sys.executable, str(BENCH_ALL), "--from-json", str(results), "--out", str(again)], check=True,
                   capture_output=True, timeout=60)
    assert again.read_text() == report + "\n" + notes
