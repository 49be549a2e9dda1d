"""A cap on how far a compressed Kafka batch may inflate in a consumer.

What kafka-python (3.0) allows by configuration: `fetch_max_bytes` and
`max_partition_fetch_bytes` bound the *compressed* bytes one fetch brings (MAX_EVENT_BYTES
here), and nothing bounds decompression: `kafka.codec.gzip_decode` inflates a whole batch
in memory, so 10 MiB of gzip (ratio ~1000:1) could become ~10 GiB in one consumer. There
is no hook for it, so this module replaces the gzip decoder the record readers use with
one that stops at MAX_DECOMPRESSED_BATCH_BYTES (per batch; each record is then still held
to MAX_EVENT_BYTES by `bus.decode`, which dead-letters it).

A v2 batch over the cap is skipped: it yields no records, so the fetcher moves past it (a
batch that kept raising would wedge its partition forever), the skip is counted and logged
with its offsets. Nothing is lost for good: every consumer reconciles pending work from
Postgres. Old-format (v0/v1) batches over the cap raise CorruptRecordError instead.
Only gzip needs this: the suite's producers use it, and no snappy/lz4/zstd library is
installed (kafka-python refuses those codecs without one).

Installed on import of runtime.bus (idempotent).
"""

from __future__ import annotations

import logging
import threading
import zlib

from kafka.errors import CorruptRecordError
from kafka.record import default_records, legacy_records

from runtime.limits import MAX_DECOMPRESSED_BATCH_BYTES

log = logging.getLogger(__name__)

# Module-level so a test can lower it; read on every batch.
batch_limit = MAX_DECOMPRESSED_BATCH_BYTES
skipped_batches = 0
_lock = threading.Lock()


class OversizedBatch(CorruptRecordError):
    """A compressed batch that inflates beyond the cap."""


def bounded_gzip_decode(payload) -> bytes:
    """gzip_decode that refuses to produce more than `batch_limit` bytes (all members of a
    multi-member stream together)."""
    limit = batch_limit
    data = bytes(payload)
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise CorruptRecordError(f"bad gzip data in a batch: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise OversizedBatch(f"a compressed batch inflates beyond {limit} bytes")
        if not inflater.eof:
            raise CorruptRecordError("truncated gzip data in a batch")
        data = inflater.unused_data
    return bytes(out)


_original_uncompress = default_records.DefaultRecordBatch._maybe_uncompress


def _maybe_uncompress(self) -> None:
    try:
        _original_uncompress(self)
    except OversizedBatch as exc:
        global skipped_batches
        with _lock:
            skipped_batches += 1
        log.warning("skipped a Kafka batch: %s", exc,
                    extra={"base_offset": self.base_offset, "next_offset": self.next_offset,
                           "records": self.records_count})
        # No records: the fetcher then moves to the batch's next offset.
        self._buffer, self._pos, self._num_records = bytearray(), 0, 0
        self._decompressed = True


def install() -> None:
    default_records.gzip_decode = bounded_gzip_decode
    legacy_records.gzip_decode = bounded_gzip_decode
    default_records.DefaultRecordBatch._maybe_uncompress = _maybe_uncompress


install()
