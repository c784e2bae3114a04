"""`python -m coverage_table [--check] [--skip-heavy] [--only KEY ...]`: see `coverage_table.run`."""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
