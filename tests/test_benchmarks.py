"""benchmarks/accelerator.py --quick, as CI runs it: every row measured (or skipped with its reason), numbers
in their ranges. A smoke test of the script, not a speed assertion: timings are never asserted in tests."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent


def test_accelerator_benchmark_quick_mode(tmp_path):
    output = tmp_path / "accelerator.json"
    done = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--quick", "--output", str(output),
                           "--scratch", str(tmp_path / "scratch")], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {(r["case"], r["framework"]): r for r in json.loads(output.read_text())["results"]}
    assert set(rows) == {("tiny-8x64", "jaxft"), ("tiny-8x64", "torch-eager"), ("tiny-packed-8x64", "jaxft"),
                         ("tiny-packed-8x64", "torch-eager")}
    for case in ("tiny-8x64", "tiny-packed-8x64"):
        ours = rows[(case, "jaxft")]
        assert ours["step_ms"] > 0 and ours["loop_step_ms"] > 0 and ours["tokens_per_s"] > 0
        assert 0 < ours["mfu"] < 1 and ours["flops"] > 0 and ours["compute"].startswith("compute float32")
        assert "train xla" in ours["attention"]
    assert rows[("tiny-8x64", "torch-eager")]["step_ms"] > 0
    assert rows[("tiny-packed-8x64", "torch-eager")]["skipped"] == "BERT's SDPA attention takes no packed rows"
    assert rows[("tiny-packed-8x64", "jaxft")]["tokens"] < rows[("tiny-8x64", "jaxft")]["tokens"] == 8 * 64
    assert "| tiny-8x64 | torch-eager |" in done.stdout
