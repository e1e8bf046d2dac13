"""Ground truth written beside the telemetry, as Parquet, appended block by block (bounded memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("transits", "packets", "events", "faults", "anomalies", "contacts")


class TruthWriter:
    """One Parquet file per table under DIR/truth/, each written in row groups as data comes."""

    def __init__(self, directory: Path):
        self.dir = Path(directory) / "truth"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self.rows: dict[str, int] = dict.fromkeys(TABLES, 0)

    def append(self, table: str, columns: dict) -> None:
        if table not in self.rows:
            raise KeyError(f"unknown truth table {table!r}")
        arrays = {k: _arrow(v) for k, v in columns.items()}
        t = pa.table(arrays)
        if t.num_rows == 0:
            return
        if table not in self._writers:
            self._schemas[table] = t.schema
            self._writers[table] = pq.ParquetWriter(
                self.dir / f"{table}.parquet", t.schema, compression="zstd"
            )
        self._writers[table].write_table(t.cast(self._schemas[table]))
        self.rows[table] += t.num_rows

    def append_rows(self, table: str, rows: list[dict]) -> None:
        if rows:
            self.append(table, {k: [r[k] for r in rows] for k in rows[0]})

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _arrow(v):
    if isinstance(v, np.ndarray) and v.ndim == 2:
        flat = pa.array(np.ascontiguousarray(v).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
    return pa.array(v)
