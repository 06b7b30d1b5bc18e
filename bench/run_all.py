"""Run every benchmark in bench/ (each module with a `main()`), one after another."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import modelchain.bench as bench


def main() -> int:
    failed = 0
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name == "run_all" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"modelchain.bench.{info.name}")
        if not hasattr(module, "main"):
            continue
        print(f"== {info.name}", flush=True)
        failed += bool(module.main([]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
