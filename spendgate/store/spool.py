"""The ledger spool: the durable hand-off between the hot path and the database.

    proxy ── append(line) ──▶ Spool: this process's segment files, written and
                               fdatasync'd in groups by one thread
                                  │ on_durable(item, position), in file order
                                  ▼
                              LedgerWriter ── batches ──▶ database ── release(position)

A call's record is in the spool file before the call's final bytes go out, so a crash
of the process (``kill -9``, the OOM killer) after a client saw its answer cannot lose
the call's spend: the next process to start in the same directory replays the file.
How soon the file is on the disk itself (what a power cut or a kernel crash needs) is
the ``sync`` mode:

* ``"interval"`` (the default): the loop writes the record itself (``os.write``: the
  kernel has it when the call goes on), and a background sync ``fdatasync``s what was
  written every ``sync_seconds``. A call waits for no disk; a power cut can lose the
  calls of the last ``sync_seconds``.
* ``"call"``: one thread of the spool's own writes and ``fdatasync``s, and the call goes
  on once its record is on the disk. A power cut loses nothing a client saw; every call
  waits for the disk's sync (milliseconds on many virtual disks).

Files. Each process appends to segment files of its own,
``ledger-<host>-<pid>-<token>-<seq>.spool``, and holds an exclusive ``flock`` on each
while it lives. A segment is sealed when it grows past ``rotate_bytes`` (or when the
writer has caught up with it) and deleted once every record in it is in the database.
A file nobody holds a lock on belongs to a dead process: ``claim_orphans`` locks it, so
two live processes never replay the same file. A file whose header names another
database (``db``, ``database_fingerprint``) is never replayed by itself: after a change
of the database's URL, ``spendgate db adopt-spool`` (``adopt``) gives it this one's.

Format. A header line (JSON: format version, the database it belongs to, the record
fields), then one record per line: ``<crc32, 8 hex digits> <payload>\\n``. A line whose
checksum does not match is skipped (and logged); a last line without its newline was
torn by a crash before it was durable, so its call never completed, and it is ignored.

Group commit (``"call"``). One thread of its own writes: appends made while a write is
in flight wait for the next one; each write is one ``os.write`` and one ``os.fdatasync``
for all of them. The loop hands a record to the thread through a queue and hears back through
``call_soon_threadsafe``: at one call at a time, that is the whole cost on top of the
``fdatasync`` (a thread pool and a task in between cost as much again).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

log = logging.getLogger("spendgate.spool")

FORMAT_VERSION = 1
SUFFIX = ".spool"
#: when a record is on the disk itself: within ``sync_seconds`` of its write, or before
#: its call goes on (see the module's docstring)
SyncMode = Literal["interval", "call"]
#: (segment sequence number, byte offset just past a record)
Position = tuple[int, int]
START: Position = (0, 0)


def frame(payload: bytes) -> bytes:
    """One record line: checksum, a space, the payload, a newline."""
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def unframe(line: bytes) -> bytes | None:
    """The payload of a complete line (without its newline), or None if it is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        expected = int(line[:8], 16)
    except ValueError:
        return None
    return payload if zlib.crc32(payload) == expected else None


def parse_lines(data: bytes, start: int, where: str) -> Iterator[tuple[bytes, int]]:
    """(payload, end offset) of each complete, intact line of ``data`` (which begins at
    file offset ``start``); a torn last line is left out, a damaged one logged."""
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return
        payload = unframe(data[pos:end])
        if payload is None:
            log.error("spool %s: damaged record at byte %d skipped", where, start + pos)
        else:
            yield payload, start + end + 1
        pos = end + 1


@dataclass(eq=False)
class Segment:
    seq: int
    path: Path
    fd: int
    #: bytes known to be on disk (header included)
    size: int
    data_start: int
    sealed: bool = False
    opened_mono: float = 0.0


@dataclass(eq=False)
class Orphan:
    """A dead process's spool file, locked by this process until ``finish`` or ``release``."""

    path: Path
    fd: int
    header: dict[str, Any]
    size: int = field(default=0)

    def records(self) -> Iterator[bytes]:
        """Every intact record payload, in file order."""
        with os.fdopen(os.dup(self.fd), "rb") as handle:
            handle.seek(0)
            handle.readline()  # the header
            offset = handle.tell()
            for line in handle:
                if not line.endswith(b"\n"):
                    return  # torn by the crash: never durable, its call never completed
                payload = unframe(line[:-1])
                if payload is None:
                    log.error("spool %s: damaged record at byte %d skipped", self.path, offset)
                else:
                    yield payload
                offset += len(line)

    def finish(self) -> None:
        """Everything in it is in the database: delete it and let go of the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)

    def release(self) -> None:
        """Not replayed after all (the database went away): keep the file, drop the lock."""
        os.close(self.fd)


class Spool:
    """One process's append-only, checksummed, fdatasync'd record files."""

    def __init__(
        self,
        directory: Path,
        *,
        header: dict[str, Any],
        max_bytes: int,
        rotate_bytes: int = 64 * 1024 * 1024,
        idle_rotate_seconds: float = 5.0,
        monotonic: Callable[[], float] | None = None,
        sync: SyncMode = "interval",
        sync_seconds: float = 0.1,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sync_mode: SyncMode = sync
        self.sync_seconds = sync_seconds
        self.rotate_bytes = rotate_bytes
        self.idle_rotate_seconds = idle_rotate_seconds
        self._header = {"spendgate_spool": FORMAT_VERSION, **header}
        self._mono = monotonic or time.monotonic
        self._prefix = f"ledger-{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._next_seq = 1
        #: (line, (item, future)) for the writer thread; None stops it
        self._inbox: queue.SimpleQueue[tuple[bytes, Any] | None] = queue.SimpleQueue()
        #: records appended and not yet reported durable or failed (on the loop only)
        self._pending = 0
        #: a new segment for the next write (set by ``release`` only while nothing is pending)
        self._new_segment = True
        #: the writer thread's segment and the offset its writes have reached
        self._tail: Segment | None = None
        self._tail_end = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: ``"interval"``: the segments written to since the last sync (by sequence
        #: number), whether a segment was made since (its name wants a directory sync),
        #: and the task that syncs them
        self._unsynced: dict[int, Segment] = {}
        self._created_unsynced = False
        self._syncer: asyncio.Task[None] | None = None
        self._dir_fd = -1
        #: called on the event loop for each record once it is durable, in file order
        self.on_durable: Callable[[Any, Position], None] = lambda _item, _pos: None
        #: the position just past the last durable record
        self.durable: Position = START
        #: bytes of this process's segments not yet deleted
        self.backlog_bytes = 0
        #: bytes of records not yet in the database (what ``max_bytes`` limits)
        self.unwritten_bytes = 0
        #: the last write's error, until a write succeeds again
        self.error: OSError | None = None
        #: between ``open`` and ``close``: an append outside is refused, never lost unsaid
        self._open = False

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY)
        self._loop = asyncio.get_running_loop()
        self._open = True
        if self.sync_mode == "call":
            self._thread = threading.Thread(target=self._writer, name="spool", daemon=True)
            self._thread.start()
        else:
            self._syncer = self._loop.create_task(self._sync_every_interval())

    async def close(self) -> None:
        """Write what was appended and put it on the disk, then let go of every file
        (they stay, for the next process to replay what the database does not have yet)."""
        self._open = False
        for _ in range(5000):  # at most ~5 s: a disk that hangs must not hang shutdown
            if not self._pending:
                break
            await asyncio.sleep(0.001)
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
            await self.sync()
        for segment in self._segments.values():
            os.close(segment.fd)
        self._segments.clear()
        self._active = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    @property
    def full(self) -> bool:
        return self.unwritten_bytes >= self.max_bytes

    # -- appending (the hot path) ----------------------------------------------------------
    async def append(self, line: bytes, item: Any) -> Position:
        """Write ``line`` (a ``frame``) durably (as the ``sync`` mode has it);
        ``on_durable(item, position)`` runs before this returns. Raises ``OSError`` if the
        disk refused it (or the spool is closed)."""
        if not self._open:
            raise OSError("the ledger spool is closed (the process is shutting down)")
        if self.sync_mode == "interval":
            return self._append_now(line, item)
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._inbox.put((line, (item, future)))
        return await future

    def _append_now(self, line: bytes, item: Any) -> Position:
        """``"interval"``: write on the loop (a few microseconds into the page cache);
        the next sync puts it on the disk."""
        try:
            segment, ends = self._write([line], sync=False)
        except OSError as exc:
            self._tail = None  # what the failed write left behind is never appended to
            log.error("ledger spool write failed (%s): a record not durable", exc)
            self.error = exc
            raise
        self._unsynced[segment.seq] = segment
        self._wrote(segment, ends, [item])
        return (segment.seq, ends[0])

    async def _sync_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            try:
                await self.sync()
            except OSError as exc:  # logged; the records are still in the kernel's hands
                log.error("ledger spool sync failed: %s", exc)

    async def sync(self) -> None:
        """``"interval"``: ``fdatasync`` every segment written to since the last sync (and
        the directory, for new segments' names), in a thread while the loop writes on.
        A segment deleted meanwhile is in the database already: nothing to sync."""
        if not self._unsynced and not self._created_unsynced:
            return
        files = [os.dup(s.fd) for seq, s in self._unsynced.items() if seq in self._segments]
        folder = os.dup(self._dir_fd) if self._created_unsynced and self._dir_fd >= 0 else None
        self._unsynced, self._created_unsynced = {}, False
        await asyncio.to_thread(_sync_and_close, files, folder)

    def _writer(self) -> None:
        """The writer thread: everything queued at once, one write and one fdatasync,
        reported back to the loop."""
        assert self._loop is not None
        stop = False
        while not stop:
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            # empty() before get_nowait(): this thread is the only reader, and at one
            # call at a time a queue.Empty raised per write is a measurable share
            while not self._inbox.empty():
                more = self._inbox.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            waiters = [waiter for _, waiter in batch]
            try:
                segment, ends = self._write([line for line, _ in batch], sync=True)
                report: tuple[Any, ...] = (self._synced, segment, ends, waiters)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                self._tail = None  # what the failed write left behind is never appended to
                failure = exc if isinstance(exc, OSError) else OSError(str(exc))
                report = (self._failed, failure, waiters)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(*report)

    def _failed(self, exc: OSError, waiters: list[tuple[Any, asyncio.Future[Position]]]) -> None:
        log.error("ledger spool write failed (%s): %d records not durable", exc, len(waiters))
        self._pending -= len(waiters)
        self.error = exc
        for _, future in waiters:
            if not future.done():
                future.set_exception(exc)

    def _synced(
        self,
        segment: Segment,
        ends: list[int],
        waiters: list[tuple[Any, asyncio.Future[Position]]],
    ) -> None:
        """``"call"``: the thread wrote and synced ``waiters``' records; they go on."""
        self._pending -= len(waiters)
        self._wrote(segment, ends, [item for item, _ in waiters])
        for (_, future), end in zip(waiters, ends, strict=True):
            if not future.done():
                future.set_result((segment.seq, end))

    def _wrote(self, segment: Segment, ends: list[int], items: list[Any]) -> None:
        """On the loop, after records were written (and, by the mode, synced)."""
        if segment is not self._active:
            if self._active is not None:
                self._active.sealed = True
            self._segments[segment.seq] = segment
            self._active = segment
            self.backlog_bytes += segment.data_start
        self.backlog_bytes += ends[-1] - segment.size
        self.unwritten_bytes += ends[-1] - segment.size
        segment.size = ends[-1]
        self.error = None
        self.durable = (segment.seq, ends[-1])
        for item, end in zip(items, ends, strict=True):
            self.on_durable(item, (segment.seq, end))

    def _write(self, lines: list[bytes], *, sync: bool) -> tuple[Segment, list[int]]:
        """A new segment if asked or due, one write, and one fdatasync if ``sync`` (in
        the spool's thread, ``"call"``; on the loop, ``"interval"``)."""
        segment = self._tail
        if segment is None or self._new_segment or self._tail_end >= self.rotate_bytes:
            self._new_segment = False
            segment = self._tail = self._create(sync=sync)
            self._tail_end = segment.size
        data = b"".join(lines)
        written = os.write(segment.fd, data)
        if written < len(data):  # a short write (rare): the rest, piece by piece
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(segment.fd, view) :]
        if sync:
            os.fdatasync(segment.fd)
        ends, offset = [], self._tail_end
        for line in lines:
            offset += len(line)
            ends.append(offset)
        self._tail_end = offset
        return segment, ends

    def _create(self, *, sync: bool) -> Segment:
        """A new segment; with ``sync``, its header and name on the disk before it is used
        (else the next interval's sync puts them there)."""
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{self._prefix}-{seq:08d}{SUFFIX}"
        # made under a name nobody replays, locked, its header written, then renamed: a
        # process scanning for dead files never sees it unlocked or without its header
        building = path.with_name(path.name + ".new")
        fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = orjson.dumps(self._header) + b"\n"
            os.write(fd, header)
            if sync:
                os.fdatasync(fd)
            os.rename(building, path)
            if sync:
                os.fsync(self._dir_fd)  # the file's name is durable too, not only its bytes
            else:
                self._created_unsynced = True
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                building.unlink()
            raise
        return Segment(seq, path, fd, len(header), len(header), opened_mono=self._mono())

    # -- the writer's side -------------------------------------------------------------------
    def read(self, after: Position, limit: int) -> list[tuple[bytes, Position]]:
        """Up to ``limit`` durable records of this process after ``after``, in order (used
        when the writer has fallen too far behind to keep them all in memory)."""
        out: list[tuple[bytes, Position]] = []
        for seq in sorted(s for s in self._segments if s >= after[0]):
            segment = self._segments[seq]
            start = after[1] if seq == after[0] else segment.data_start
            start = max(start, segment.data_start)
            chunk = min(segment.size - start, 8 * 1024 * 1024)
            if chunk <= 0:
                continue
            data = os.pread(segment.fd, chunk, start)
            for payload, end in parse_lines(data, start, str(segment.path)):
                out.append((payload, (seq, end)))
                if len(out) >= limit:
                    return out
            if start + chunk < segment.size:
                return out  # the rest of this segment next time
        return out

    def release(self, upto: Position, *, final: bool = False) -> None:
        """Every record up to ``upto`` is in the database: delete the sealed segments it
        covers; seal and delete the active one too when the writer has caught up with it
        and it is big or old enough (so a restart has little to replay), or ``final``."""
        active = self._active
        if (
            active is not None
            and not self._pending
            and upto == self.durable == (active.seq, active.size)
            and active.size > active.data_start
            and (
                final
                or active.size >= self.rotate_bytes // 64
                or self._mono() - active.opened_mono >= self.idle_rotate_seconds
            )
        ):
            active.sealed = True
            self._active = None
            self._new_segment = True
        for seq in sorted(self._segments):
            segment = self._segments[seq]
            done = seq < upto[0] or (seq == upto[0] and upto[1] >= segment.size)
            if not (segment.sealed and done):
                break
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            os.close(segment.fd)
            del self._segments[seq]
            self.backlog_bytes -= segment.size
        self.unwritten_bytes = sum(
            segment.size - max(segment.data_start, upto[1] if seq == upto[0] else 0)
            for seq, segment in self._segments.items()
            if seq >= upto[0]
        )

    # -- dead processes' files -----------------------------------------------------------------
    def claim_orphans(self) -> list[Orphan]:
        """Lock every spool file in the directory that no live process holds and whose
        header names this spool's database; oldest first."""
        own = {segment.path.name for segment in self._segments.values()}
        claimed: list[Orphan] = []
        try:
            paths = sorted(
                (p for p in self.directory.glob(f"*{SUFFIX}") if p.name not in own),
                key=lambda p: (p.stat().st_mtime, p.name),
            )
        except FileNotFoundError:
            return []
        for path in paths:
            orphan = _claim(path)
            if orphan is None:
                continue
            if orphan.header.get("db") != self._header.get("db"):
                log.warning(
                    "spool file %s belongs to another database (%s; this one is %s): left "
                    "alone. If it is this database under another URL, its rows wait for "
                    "`spendgate db adopt-spool --from %s`",
                    path, orphan.header.get("db"), self._header.get("db"), orphan.header.get("db"),
                )  # fmt: skip
                orphan.release()
                continue
            claimed.append(orphan)
        return claimed

    def waiting_bytes(self) -> tuple[int, int]:
        """Bytes in spool files no live process holds: (dead processes' rows waiting for a
        replay here, rows of files naming another database, which wait for ``adopt``).
        A live sibling's files (``serve --workers``, a directory shared by the replicas
        of a host) are its own backlog, not orphans."""
        own = {segment.path.name for segment in self._segments.values()}
        orphan = foreign = 0
        for _, header, size in unheld_files(self.directory, own):
            if header is not None and header.get("db") != self._header.get("db"):
                foreign += size
            else:
                orphan += size
        return orphan, foreign


def _sync_and_close(files: list[int], folder: int | None) -> None:
    """In a thread: ``fdatasync`` each (duplicated) file descriptor and ``fsync`` the
    directory's (for the names of new files), then close them."""
    try:
        for fd in files:
            os.fdatasync(fd)
        if folder is not None:
            os.fsync(folder)
    finally:
        for fd in [*files, *([] if folder is None else [folder])]:
            os.close(fd)


def unheld_files(
    directory: Path, own: Collection[str] = ()
) -> Iterator[tuple[Path, dict[str, Any] | None, int]]:
    """Each spool file in ``directory`` (but those named in ``own``) that no process
    holds: its path, header (None: unreadable) and size. The shared lock taken to tell
    is held for a moment only; a claim that meets it waits for the next sweep."""
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.name in own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process writes it (or is replaying it)
        with os.fdopen(fd, "rb") as handle:  # closing it drops the shared lock
            header, size = _header(handle.readline()), os.fstat(fd).st_size
        yield path, header, size  # unlocked again: the caller may claim it


def _header(first: bytes) -> dict[str, Any] | None:
    """A spool file's header from its first line, None if it is not one."""
    try:
        header = orjson.loads(first) if first.endswith(b"\n") else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("spendgate_spool") != FORMAT_VERSION:
        return None
    return header


def adopt(path: Path, fingerprint: str) -> str | None:
    """Have the spool file at ``path`` name the database ``fingerprint``: a copy with the
    new header (the old one kept as ``adopted_from``) and the same records, made under a
    name nobody replays and renamed over it, both locked meanwhile. Returns the database
    it named before; None, and the file left as it was, if a live process holds it (or
    it is gone, or has no header)."""
    orphan = _claim(path)
    if orphan is None:
        return None
    building = path.with_name(path.name + ".new")  # a crashed adopt's is stale: replaced
    try:
        before = str(orphan.header.get("db"))
        header = {**orphan.header, "db": fingerprint, "adopted_from": before}
        building.unlink(missing_ok=True)
        fd = os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, os.fdopen(os.dup(orphan.fd), "rb") as source:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the rename is done
            out.write(orjson.dumps(header) + b"\n")
            source.seek(0)
            source.readline()
            while chunk := source.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(fd)
            os.rename(building, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new name is durable too
        finally:
            os.close(folder)
    except BaseException:
        building.unlink(missing_ok=True)
        raise
    finally:
        orphan.release()
    return before


def _claim(path: Path) -> Orphan | None:
    """Lock ``path`` if nobody holds it and it is still the file at that name."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # a live process holds it
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # replayed and deleted by another process while we opened it
        os.close(fd)
        return None
    with os.fdopen(os.dup(fd), "rb") as handle:
        first = handle.readline()
        size = os.fstat(fd).st_size
    header = _header(first)
    if header is None:
        if size <= len(first):  # created, then the process died before its header was durable
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            log.error("spool file %s has no readable header; left alone", path)
        os.close(fd)
        return None
    return Orphan(path, fd, header, size)
