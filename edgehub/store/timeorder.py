"""Finding where a table's recent rows start, for tables whose rows are added in time order."""

from __future__ import annotations

import sqlite3


def first_rowid_since(conn: sqlite3.Connection, table: str, column: str, since: float) -> int | None:
    """The first rowid of ``table`` at or after ``since`` in ``column``: rows are added in time
    order, so a binary search over rowids finds it without reading the table (months of rows).
    ``table`` and ``column`` are the owner's own names, never input."""
    low, high = conn.execute(f"SELECT MIN(rowid), MAX(rowid) + 1 FROM {table}").fetchone()
    if low is None:
        return None

    def first_from(rowid: int) -> tuple[int, float] | None:
        row = conn.execute(f"SELECT rowid, {column} FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1",
                           (rowid,)).fetchone()
        return (int(row[0]), float(row[1])) if row is not None else None

    # Rows before ``low`` are older; the first row from ``high`` on is not (or there is none).
    while low < high:
        mid = (low + high) // 2
        row = first_from(mid)
        if row is None or row[1] >= since:
            high = mid
        else:
            low = row[0] + 1
    row = first_from(low)
    return row[0] if row is not None and row[1] >= since else None
