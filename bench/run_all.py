"""`make bench`: every benchmark in bench/ in one go, a table, then one JSON line with all figures.

Each benchmark measures its own ceiling in the same run and prints its figures as the last line
(one JSON object); this collects them. A benchmark that fails is reported, and the others run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"common.py", "run_all.py"}


def main() -> int:
    results: dict[str, object] = {}
    failed = []
    for script in sorted(p for p in HERE.glob("*.py") if p.name not in SKIP):
        name = script.stem
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        lines = proc.stdout.strip().splitlines()
        for line in lines[:-1]:
            print(f"   {line}")
        try:
            figures = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            figures = None
        if proc.returncode != 0 or not isinstance(figures, dict):
            failed.append(name)
            print(f"   FAILED (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
            continue
        results[name] = figures
        print(f"   ({time.perf_counter() - started:.0f} s)")
    print()
    print(f"{'benchmark':<12} {'figure':<28} value")
    for name, figures in results.items():
        assert isinstance(figures, dict)
        for key, value in figures.items():
            print(f"{name:<12} {key:<28} {value}")
    print(json.dumps({"results": results, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
