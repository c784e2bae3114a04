"""The README's library coverage table: specimens restored through a real python3-elastic kernel.

`make coverage-table` (write) and `make coverage-check` (compare). Not part of the installed package.
"""

from __future__ import annotations
