"""User-facing errors: bad input or configuration.

The CLI prints a `MeltError` as one line without a traceback and exits with status 2, so every error that a
user can fix by changing their input or command should be a `MeltError` naming the file, row and column.
"""

from __future__ import annotations

from pathlib import Path


class MeltError(Exception):
    """An error the user can fix. `row` is the 1-based data row (the header is not counted)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message
