"""``python -m bench [storage|scraper|isolation ...]``: run the benchmarks (all by default) and print their figures."""

from __future__ import annotations

import asyncio
import sys

from bench import isolation, scraper, storage

SUITES = {"storage": storage.main, "scraper": scraper.main, "isolation": isolation.main}


def run() -> None:
    names = sys.argv[1:] or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    for name in names:
        asyncio.run(SUITES[name]())


if __name__ == "__main__":
    run()
