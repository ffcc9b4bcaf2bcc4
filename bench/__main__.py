"""Run the benchmarks and write their results to docs/benchmarks.md.

    python -m bench            # every bench/bench_*.py
    python -m bench upload sse # only those whose name contains one of the words

Each module `bench/bench_NAME.py` has `main() -> str` returning a Markdown section. The section is
saved as docs/benchmarks/NAME.md with the machine and date, and docs/benchmarks.md is rebuilt
from every saved section, so running one benchmark keeps the others' last results.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def rebuild_index() -> None:
    parts = [
        "# Benchmarks\n",
        "Written by `make bench` (one section per `bench/bench_*.py`; each keeps its own machine "
        "and date). Targets come from the issues; a result is only a number on the machine named.\n",
    ]
    for path in sorted((DOCS / "benchmarks").glob("*.md")):
        parts.append(path.read_text().rstrip() + "\n")
    (DOCS / "benchmarks.md").write_text("\n".join(parts))


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbox.settings")
    sys.path.insert(0, str(ROOT))
    names = sorted(p.stem[len("bench_") :] for p in (ROOT / "bench").glob("bench_*.py"))
    wanted = [n for n in names if not argv or any(word in n for word in argv)]
    (DOCS / "benchmarks").mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in wanted:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            section = module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' results
            failed += 1
            print(f"bench {name} failed: {exc!r}", flush=True)
            continue
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = f"{section.rstrip()}\n\n_Measured {stamp} on {machine()}._\n"
        (DOCS / "benchmarks" / f"{name}.md").write_text(text)
        print(text, flush=True)
    rebuild_index()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
