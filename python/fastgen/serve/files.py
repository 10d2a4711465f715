"""``response_format="url"``: generated files kept in memory for a while under ``/v1/files/{id}``.

Bounded in count and bytes (the oldest are dropped first) and expiring after ``ttl_s``. Ids are 128
random bits, so a URL is a capability: whoever holds it may fetch the file until it expires (the
route needs no API key, as image URLs are fetched by plain clients and browsers).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict


class FileStore:
    def __init__(self, *, max_files: int = 256, max_bytes: int = 256 << 20, ttl_s: float = 600.0):
        self.max_files, self.max_bytes, self.ttl_s = int(max_files), int(max_bytes), float(ttl_s)
        self._files: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while len(self._files) > 1 or (self._files and now - next(iter(self._files.values()))[0] >= self.ttl_s):
            fid, (t, _, data) = next(iter(self._files.items()))
            if now - t < self.ttl_s and len(self._files) <= self.max_files and self._bytes <= self.max_bytes:
                return
            del self._files[fid]
            self._bytes -= len(data)

    def put(self, data: bytes, content_type: str, suffix: str = "") -> str:
        """Keep ``data``; returns its id (``file-<hex><suffix>``)."""
        fid = f"file-{secrets.token_hex(16)}{suffix}"
        with self._lock:
            self._files[fid] = (time.monotonic(), content_type, data)
            self._bytes += len(data)
            self._expire(time.monotonic())
        return fid

    def get(self, fid: str) -> tuple[str, bytes] | None:
        with self._lock:
            self._expire(time.monotonic())
            item = self._files.get(fid)
            return None if item is None else (item[1], item[2])

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
