"""A saved dataset read lazily: each table is a polars Parquet scan, read when and as far as it is used.

``load_dataset`` returns a :class:`ScannedTraceData`: its tables stay on disk until an analyzer
asks for one, and each request is a ``pl.scan_parquet`` plan, so the columns and rows a caller
selects or filters on are pushed into the Parquet reader (projection and predicate pushdown:
only the row groups whose min/max statistics can match, and only the selected columns, are
decoded). An analysis therefore holds at once the columns of the tables one analyzer reads, not
the whole dataset: tables no analyzer reads (e.g. kvm_emulate_insn, per-event tables) are never
decoded at all. Frames have the dtypes of the in-memory path (``TraceData.df``: the declared
Arrow schema, dictionary columns as Categorical), so results are the same; tests check this on
every fixture.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from vpmutrace.parquet_pages import check_file, errors, open_file, unreadable
from vpmutrace.schema import ALL_TABLES
from vpmutrace.stats import Stats
from vpmutrace.tracedata import TraceData, empty_frame

if TYPE_CHECKING:
    import polars as pl


def read_table(path: Path, name: str) -> pa.Table:
    """One Parquet table, its pages checked first (``parquet_pages``), cast to its declared schema
    (named tables; an event's own table gets its declared nullability back: the writer makes columns
    without nulls required), or an InputError naming the file."""
    import pyarrow.parquet as pq

    from vpmutrace.tracedata import declared_nullability

    check_file(path)
    try:
        t = pq.read_table(path)
    except errors() as e:
        raise unreadable(path, e) from None
    return t.cast(ALL_TABLES[name].arrow_schema) if name in ALL_TABLES else declared_nullability(t)


def row_count(path: Path) -> int:
    """Rows of a Parquet file, from its footer (nothing else is read)."""
    return open_file(path).metadata.num_rows


@cache
def _declared_schema(name: str) -> pl.Schema:
    import polars as pl

    return pl.from_arrow(ALL_TABLES[name].arrow_schema.empty_table()).schema  # type: ignore[union-attr]


class LazyTables(MutableMapping[str, pa.Table]):
    """``TraceData.tables`` of a scanned dataset: names and row counts from the Parquet footers; a
    table is read (whole, as an Arrow table) only when indexed. Analyzers use ``TraceData.scan``. A
    table assigned or deleted (as on an in-memory TraceData) replaces or hides its file."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = dict(files)
        self.mem: dict[str, pa.Table] = {}
        self.rows = {name: row_count(p) for name, p in files.items()}
        self.checked: dict[str, set[str] | None] = {}  # table -> columns whose pages were checked (None: all)
        self.no_checksums: set[str] = set()  # tables whose file has no page checksums (written before them)

    def check(self, name: str, columns: list[str] | tuple[str, ...] | None = None) -> None:
        """Check the pages of ``columns`` (all when None) of a table's file before they are decoded,
        once per table and column (``parquet_pages``)."""
        path = self.files.get(name)
        done = self.checked.get(name, set())
        if path is None or done is None:
            return
        todo = None if columns is None else [c for c in columns if c not in done]
        if todo == []:
            return
        if not check_file(path, todo):
            self.no_checksums.add(name)
        self.checked[name] = None if todo is None else done | set(todo)

    def __getitem__(self, name: str) -> pa.Table:
        if name in self.mem:
            return self.mem[name]
        if name not in self.files:
            raise KeyError(name)
        t = read_table(self.files[name], name)
        self.checked[name] = None
        return t

    def __setitem__(self, name: str, t: pa.Table) -> None:
        self.files.pop(name, None)
        self.mem[name] = t
        self.rows[name] = t.num_rows

    def __delitem__(self, name: str) -> None:
        if name not in self.files and name not in self.mem:
            raise KeyError(name)
        self.files.pop(name, None)
        self.mem.pop(name, None)
        del self.rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self.files, *self.mem])

    def __len__(self) -> int:
        return len(self.files) + len(self.mem)


class ScannedTraceData(TraceData):
    """A dataset whose tables are Parquet scans (see the module docstring)."""

    tables: LazyTables  # type: ignore[assignment]

    def __init__(self, files: dict[str, Path], meta: dict[str, Any], stats: Stats) -> None:
        super().__init__(LazyTables(files), meta, stats)  # type: ignore[arg-type]

    def scan(self, name: str, columns: list[str] | tuple[str, ...] | None = None) -> pl.LazyFrame:
        """A Parquet scan of a table in the in-memory path's dtypes (an absent table: an empty
        frame of its declared schema); ``columns`` projects it."""
        import polars as pl

        path = self.tables.files.get(name)
        if name in self.tables.mem:
            lf = super().df(name).lazy()
        elif path is None:
            lf = empty_frame(name).lazy()
        else:
            self.tables.check(name, columns)
            lf = pl.scan_parquet(path)
            if name in ALL_TABLES:  # files of an older writer may differ in integer widths: the declared types
                have = lf.collect_schema()
                want = _declared_schema(name)
                casts = {c: t for c, t in want.items() if c in have and have[c] != t}
                if casts:
                    lf = lf.cast(casts)  # type: ignore[arg-type]
        return lf.select(list(columns)) if columns is not None else lf

    def df(self, name: str) -> pl.DataFrame:
        return self.scan(name).collect()

    def batches(self, name: str, columns: list[str] | tuple[str, ...], rows: int) -> Iterator[pl.DataFrame]:
        """Read from the file a row group's pages at a time (pyarrow pulls as it is asked; a polars
        batch stream runs ahead of a slow reader), in the declared types as ``scan``."""
        import polars as pl
        import pyarrow.parquet as pq

        path = self.tables.files.get(name)
        if name in self.tables.mem or path is None:
            yield from super().batches(name, columns, rows)
            return
        want = self.scan(name, columns).collect_schema()
        # pre_buffer (the default) keeps every range read so far: RSS grew with the file (360 MB for
        # kvm_exit of 11 M rows against 186 MB without it)
        for b in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=rows, columns=list(columns)):
            df = pl.from_arrow(b)
            casts = {c: t for c, t in want.items() if df.schema[c] != t}  # type: ignore[union-attr]
            yield df.cast(casts) if casts else df  # type: ignore[union-attr, arg-type]

    def check_pages(self) -> str | None:
        """Check every page of every table (``vpmutrace info``; the other commands check the pages of
        the columns they read, when they first read them). Returns a note when files have no page
        checksums (datasets written before them: their pages are decoded to check them, but a changed
        value that still decodes cannot be found)."""
        for name in list(self.tables.files):
            self.tables.check(name)
        old = [n for n in self.tables.no_checksums if n in self.tables.files]
        if not old:
            return None
        d = self.tables.files[old[0]].parent
        return (f"{len(old)} of {len(self.tables.files)} Parquet files of {d} have no page checksums (written "
                "before vpmutrace wrote them): a changed value inside their pages cannot be detected; "
                f"`vpmutrace ingest {d} -o NEW` writes the dataset again with them")

    def has(self, name: str) -> bool:
        return self.tables.rows.get(name, 0) > 0

    def row_counts(self) -> dict[str, int]:
        return dict(self.tables.rows)

    def save(self, out_dir: str | Path, early: Any = None) -> Path:
        """As ``TraceData.save``; into its own directory, after reading every table (the files are rewritten).
        ``early`` (``EarlyWrites``) holds nothing for a dataset read back: ``vpmutrace ingest DATASET`` passes it."""
        files = self.tables.files
        if files and Path(out_dir).resolve() == next(iter(files.values())).parent.resolve():
            return self.materialize().save(out_dir, early)
        return super().save(out_dir, early)

    def materialize(self) -> TraceData:
        """The same dataset read into memory at once (the in-memory path)."""
        return TraceData({n: self.tables[n] for n in self.tables}, self.meta, self.stats)
