"""The records of a perf.data written with ``perf record -z``, as one stream of plain records in file order.

perf compresses what it reads from the ring buffers into PERF_RECORD_COMPRESSED records (and, in
newer perf, COMPRESSED2, whose ``data_size`` says how many of the bytes after its 16-byte
header are compressed data: the rest pads the record to 8 bytes). The writer keeps ONE zstd
compression stream for the whole session and only flushes it after each record
(tools/perf/util/zstd.c zstd_compress_stream_to_records: ZSTD_compressStream then
ZSTD_flushStream, never ZSTD_endStream), so a record's data is no frame of its own: it may refer
back to data of earlier records, and can only be decompressed after them, by the same
decompression context. perf's reader does just that (tools/perf/util/session.c, in later
releases tools/perf/util/tool.c, perf_session__process_compressed_event): one ``zstd_data`` per file,
``zstd_decompress_stream`` (util/zstd.c) into a buffer that starts with what the previous
record's buffer left over, as a record inside may be cut between two COMPRESSED records; the
records in that buffer are then processed as if they were in the file. Records outside
COMPRESSED records (FINISHED_ROUND, the records perf synthesizes at start) stay in place.

``Expansion`` is that stream for the in-memory reader (perf_data.py, which joins it) and for the
streaming one (perf_stream_z.py, which walks it piece by piece): the same bytes, at the same
offsets, either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vpmutrace.errors import InputError
from vpmutrace.formats.perf_abi import REC_COMPRESSED, REC_COMPRESSED2
from vpmutrace.readers.binio import MAX_EXPANSION

COMPRESSED_TYPES = (REC_COMPRESSED, REC_COMPRESSED2)
# compressed bytes handed to the decompressor at a time: what one call returns is bounded by this
# times zstd's largest ratio (an RLE block: a 4-byte block expands to 128 KB, RFC 8878 3.1.1.2)
FEED_BYTES = 1 << 12


class Expansion:
    """Records in file order with COMPRESSED / COMPRESSED2 records replaced by what they hold,
    through one zstd decompression context for the whole file. A record that does not decompress
    ends the stream there (``problem`` says why; the caller counts it as partial). ``room``: the
    most the stream may expand to (binio.expansion_room), past which the file is refused."""

    def __init__(self, path: str, buf: np.ndarray, room: int) -> None:
        import zstandard

        self.path, self.buf, self.room = path, buf, room
        # read_across_frames: a stream of several frames reads on as one (ZSTD_decompressStream does)
        self.dec = zstandard.ZstdDecompressor().decompressobj(write_size=1 << 17, read_across_frames=True)
        self.error = zstandard.ZstdError
        self.total = 0  # bytes of the stream so far
        self.largest = 0  # the most bytes one step gave (a record outside, or one feed's output)
        self.problem: str | None = None

    def records(self, offs: np.ndarray, types: np.ndarray, sizes: np.ndarray,
                ends: np.ndarray) -> Iterator[np.ndarray | bytes]:
        """The stream's bytes for the file's records at ``offs`` (in file order, each ending at
        ``ends``: a record other than COMPRESSED keeps the data it carries after header.size)."""
        buf = self.buf
        for o, t, s, e in zip(offs.tolist(), types.tolist(), sizes.tolist(), ends.tolist(), strict=True):
            if self.problem is not None:
                return
            if t not in COMPRESSED_TYPES:
                yield self._count(buf[o:e], o)
                continue
            data = buf[o + 8:o + s]
            if t == REC_COMPRESSED2:
                dsize = int(buf[o + 8:o + 16].view("<u8")[0])
                if dsize > s - 16:
                    self.problem = f"COMPRESSED2 record at offset {o}: data size {dsize} is more than the " \
                                   f"{s - 16} bytes it holds; records from it on not read"
                    return
                data = buf[o + 16:o + 16 + dsize]
            try:
                for i in range(0, len(data), FEED_BYTES):
                    out = self.dec.decompress(data[i:i + FEED_BYTES])
                    if out:
                        yield self._count(out, o)
            except self.error as err:
                self.problem = f"COMPRESSED record at offset {o} does not decompress ({err}); " \
                               "records from it on not read"
                return

    def _count(self, data: np.ndarray | bytes, o: int) -> np.ndarray | bytes:
        self.total += len(data)
        self.largest = max(self.largest, len(data))
        if self.total > self.room:
            raise InputError(self.path, f"compressed records expand to more than {self.room} bytes "
                                        f"({MAX_EXPANSION} times the file): not read", f"offset {o}")
        return data
