"""What a check found: summary lines and problems, shared by the stage, pipeline and preview checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.errors import AlignkitError


@dataclass
@dataclass
class Report:
    """What a check found: lines for the summary, and the problems (each one names its file/key/row and fix)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, text: str) -> None:
        self.lines.append(f"  {what:<11} {text}")

    def problem(self, error: AlignkitError | str, where: str = "") -> None:
        for line in str(error).splitlines():
            self.problems.append(f"{where}{line}" if where and not line.startswith(where) else line)

