"""Pure logic of the coverage table: verdicts from observations, the markdown, the README section.

No I/O here: the probe observes, the runner reads and writes files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

START = "<!-- coverage-table:start -->"
END = "<!-- coverage-table:end -->"
PATHS = ("migrate", "recompute", "crash")
PASS, NOT_APPLICABLE, FAIL = "\u2705", "\u2796", "\u274c"  # check mark, heavy minus, cross
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


@dataclass(frozen=True)
class Verdict:
    mark: str
    reason: str = ""

    def to_json(self) -> list[str]:
        return [self.mark, self.reason]

    @classmethod
    def from_json(cls, data: Sequence[str]) -> Verdict:
        return cls(data[0], data[1])


def clean(reason: str, limit: int = 240) -> str:
    """One line, no memory addresses (they change every run), no table-breaking pipes, bounded."""
    text = _ADDRESS.sub("0x…", " ".join(reason.split())).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _named(entries: Mapping[str, str] | None, names: Sequence[str]) -> str:
    """`name: reason; ...` for the entries about the specimen's names."""
    return "; ".join(f"{name}: {entries[name]}" for name in names if entries and name in entries)


def judge(path: str, names: Sequence[str], observation: Mapping[str, Any]) -> Verdict:
    """The verdict of one path for one specimen.

    PASS: the fingerprint after the restore equals the one before, and the agent's report neither
    lost nor flagged any of the names (and, for migrate/recompute, it took the forced way).
    NOT_APPLICABLE: migrate for a value the checkpoint could not store; recompute for a value the agent will not
    (or cannot) rebuild by re-running its cells. FAIL: anything else, with the reason.
    """
    if observation.get("setup_error"):
        return Verdict(FAIL, clean(observation["setup_error"]))
    seen = observation["paths"].get(path)
    if seen is None:
        return Verdict(FAIL, "not observed")
    stored = observation.get("variables") or {}
    unstored = _named({n: e["recompute_only"] for n, e in stored.items() if e and e.get("recompute_only")}, names)
    missing = [name for name in names if not stored.get(name)]
    if missing:
        return Verdict(FAIL, clean(f"not in the checkpoint: {', '.join(missing)}"))
    if path == "migrate" and unstored:
        return Verdict(NOT_APPLICABLE, clean(f"cannot be stored: {unstored}"))
    report = seen.get("report")
    lost = _named(report and report.get("lost"), names)
    if path == "recompute" and lost:
        # The table itself marked every group "not serializable" to force the rebuild: only the rest is news.
        return Verdict(NOT_APPLICABLE, clean(f"not rebuilt: {lost}".replace("not serializable, and ", "")))
    if lost:
        return Verdict(FAIL, clean(f"lost: {lost}"))
    if seen.get("error"):
        return Verdict(FAIL, clean(seen["error"]))
    differs = _named(report and report.get("mismatched"), names)
    if differs and path != "recompute" and seen.get("after") == observation.get("before"):
        return Verdict(FAIL, clean(f"equal by this table's fingerprint, but the report says DIFFERS: {differs}"))
    if differs:
        return Verdict(FAIL, clean(f"the restore report says DIFFERS: {differs}"))
    if report is None:
        return Verdict(FAIL, "no restore report")
    if path in ("migrate", "recompute"):
        key = "restored" if path == "migrate" else "recomputed"
        other = [n for n in names if n not in (report.get(key) or [])]
        if other:
            how = "loaded" if path == "migrate" else "rebuilt"
            return Verdict(FAIL, clean(f"not {how}: {', '.join(other)}"))
    if seen.get("after") != observation.get("before"):
        return Verdict(FAIL, "restored, but its fingerprint differs from the one before")
    return Verdict(PASS)


def verdicts(names: Sequence[str], observation: Mapping[str, Any]) -> dict[str, Verdict]:
    return {path: judge(path, names, observation) for path in PATHS}


@dataclass(frozen=True)
class Row:
    specimen: str
    library: str
    version: str
    verdicts: Mapping[str, Verdict]
    heavy: bool = False


def render(rows: Sequence[Row], heavy_note: str = "") -> str:
    """The markdown between the markers: the table, then one numbered note per distinct reason."""
    notes: dict[str, int] = {}

    def cell(verdict: Verdict) -> str:
        if not verdict.reason:
            return verdict.mark
        number = notes.setdefault(verdict.reason, len(notes) + 1)
        return f"{verdict.mark} [{number}]"

    libraries = sorted({row.library for row in rows})
    counts = {mark: sum(1 for row in rows for v in row.verdicts.values() if v.mark == mark)
              for mark in (PASS, NOT_APPLICABLE, FAIL)}
    lines = [
        f"{len(rows)} specimens, {len(libraries)} libraries: {counts[PASS]} {PASS}, "
        f"{counts[NOT_APPLICABLE]} {NOT_APPLICABLE}, {counts[FAIL]} {FAIL} (of {len(rows) * len(PATHS)}).",
        "",
        "| library | version | specimen | migrate | recompute | crash |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        mark = " \\*" if row.heavy and heavy_note else ""
        lines.append(f"| {row.library} | {row.version}{mark} | {row.specimen} | "
                     + " | ".join(cell(row.verdicts[path]) for path in PATHS) + " |")
    lines.append("")
    if heavy_note and any(row.heavy for row in rows):
        lines += [f"\\* {heavy_note}", ""]
    lines += [f"{number}. {reason}" for reason, number in notes.items()]
    return "\n".join(lines)


class SectionMissing(ValueError):
    """The README has no (or a malformed) pair of coverage-table markers."""


def section(readme: str) -> str:
    """What is between the markers now (without the newlines that frame it)."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start or readme.count(START) != 1 or readme.count(END) != 1:
        raise SectionMissing(f"README needs exactly one {START} ... {END} pair")
    return readme[start + len(START) : end].strip("\n")


def replace_section(readme: str, body: str) -> str:
    """The README with the text between the markers replaced by `body`."""
    section(readme)  # validates the markers
    start, end = readme.find(START) + len(START), readme.find(END)
    return readme[:start] + "\n" + body.strip("\n") + "\n" + readme[end:]
