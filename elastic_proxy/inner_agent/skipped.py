"""What the first cell says when the supervisor skipped the restore (the previous child ran out
of memory while restoring): why, the biggest variables of the newest checkpoint, and the two ways
on (`%elastic restore --skip NAME ...`, `%elastic reset`).

Reads only the newest signed manifest (sizes and types); nothing is unpickled.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

LARGEST_SHOWN = 5
MIB = 1 << 20


@dataclass
class SkippedRestore:
    """The notice, renderable like a RestoreReport (text and HTML)."""

    reason: str
    session: str = ""
    generation: int | None = None
    cell: int | None = None
    variables: int = 0
    total_bytes: int = 0
    largest: list[tuple[str, str, int]] = field(default_factory=list)
    """(name, type, size in bytes), biggest first."""

    found_nothing = False
    """Always shown: the user must learn why the namespace is empty."""

    def commands(self) -> list[tuple[str, str]]:
        if self.generation is None:
            return []
        names = " ".join(name for name, _, _ in self.largest[:1]) or "NAME"
        return [
            (f"%elastic restore --skip {names} [NAME ...]", "restore it without the variables you name"),
            ("%elastic reset", "start clean (deletes this session's checkpoints)"),
        ]

    def headline(self) -> str:
        return f"elastic: the restore was skipped: {self.reason}"

    def to_text(self) -> str:
        lines = [self.headline()]
        if self.generation is None:
            lines.append("  no valid checkpoint of this session to restore from")
            return "\n".join(lines)
        lines.append(f"  newest checkpoint: generation {self.generation} (state after cell [{self.cell}]), "
                     f"{self.variables} variables, {self.total_bytes / MIB:.1f} MiB")
        lines.append("  largest variables:")
        width = max((len(name) for name, _, _ in self.largest), default=0)
        type_width = max((len(kind) for _, kind, _ in self.largest), default=0)
        lines.extend(f"    {name:<{width}}  {kind:<{type_width}}  {size / MIB:10.1f} MiB"
                     for name, kind, size in self.largest)
        commands = self.commands()
        command_width = max(len(command) for command, _ in commands)
        lines.extend(f"  {command:<{command_width}}   {what}" for command, what in commands)
        return "\n".join(lines)

    __str__ = to_text

    def _repr_html_(self) -> str:
        parts = [f"<div class='elastic-restore-skipped'><b>{html.escape(self.headline())}</b>"]
        if self.generation is None:
            parts.append("<p>no valid checkpoint of this session to restore from</p></div>")
            return "".join(parts)
        parts.append(f"<p>newest checkpoint: generation {self.generation} (state after cell "
                     f"[{self.cell}]), {self.variables} variables, {self.total_bytes / MIB:.1f} MiB</p>")
        rows = "".join(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(kind)}</td>"
                       f"<td style='text-align:right'>{size / MIB:.1f} MiB</td></tr>"
                       for name, kind, size in self.largest)
        parts.append(f"<table><tr><th>variable</th><th>type</th><th>size</th></tr>{rows}</table>")
        parts.extend(f"<p><code>{html.escape(command)}</code>: {html.escape(what)}</p>"
                     for command, what in self.commands())
        parts.append("</div>")
        return "".join(parts)

    def mimebundle(self) -> dict[str, str]:
        return {"text/plain": self.to_text(), "text/html": self._repr_html_()}

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "largest": [list(entry) for entry in self.largest]}


def skipped_restore(store: Any, reason: str, shown: int = LARGEST_SHOWN) -> SkippedRestore:
    """The notice for the newest valid generation of `store` (sizes are the recorder's estimates)."""
    notice = SkippedRestore(reason=reason or "the supervisor gave no reason",
                            session=str(getattr(store, "session", "")))
    manifest = store.latest()
    if manifest is None:
        return notice
    variables: dict[str, Any] = manifest.get("variables", {}) or {}
    sizes = [(name, str(entry.get("type", "?")), int(entry.get("size", 0) or 0))
             for name, entry in variables.items()]
    sizes.sort(key=lambda item: (-item[2], item[0]))
    notice.generation = manifest.generation
    notice.cell = int(manifest.get("execution_count", 0) or 0)
    notice.variables = len(sizes)
    notice.total_bytes = sum(size for _, _, size in sizes)
    notice.largest = sizes[:shown]
    return notice
