"""`python -m bench`: the benchmark suite (see bench/suite.py)."""

from __future__ import annotations

from bench.suite import main

raise SystemExit(main())
