"""The journal's checkpoints, off the commit path.

In WAL mode every commit appends pages to the WAL; a checkpoint copies them back into the
database file (and fsyncs it) so the WAL can start over. SQLite's automatic checkpoint runs
inside the commit that crosses ``wal_autocheckpoint``: that commit, and every order waiting on
it, stalls for the copy (8 commits of 100-250 ms in a 10 s run at 500 orders/s on this VM: the
tail of the ack latency). Here a thread of its own, on its own connection, runs a PASSIVE
checkpoint (it never blocks the writer, which keeps appending meanwhile) once the writer has
committed ``after_commits`` times, or ``after_s`` after the last commit when the box is quiet;
once the WAL holds ``restart_frames``, a RESTART checkpoint lets it start over (journal_size_limit
then trims the file).

Fewer, larger checkpoints also write less: a page changed by several commits (a kitchen ticket
created, bumped, served; the outbox's last page) reaches the database file once per checkpoint
(docs/footprint.md). SQLite's own automatic checkpoint stays armed far above this one's mark,
as a safety net should this thread ever fall behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger("edgehub.journal")


class Checkpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], after_commits: int = 64,
                 after_s: float = 300.0, restart_frames: int = 4096) -> None:
        self._connect = connect
        self.after_commits = after_commits
        self.after_s = after_s
        self.restart_frames = restart_frames
        self._commits = 0  # since the last checkpoint (written by the writer thread only)
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0
        self.restarts = 0
        self.last_ms = 0.0
        self.last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread (blocking); SQLite checkpoints what is left when the journal closes."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def committed(self) -> None:
        """Called by the writer thread after each commit."""
        self._commits += 1
        if self._commits == self.after_commits:
            self._wake.set()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            self.last_error = str(exc)
            log.error("journal checkpoints off (SQLite checkpoints inside commits instead): %s", exc)
            return
        try:
            while not self._stopping:
                self._wake.wait(self.after_s)
                self._wake.clear()
                if self._stopping or self._commits == 0:
                    continue
                self._commits = 0
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        started = time.perf_counter()
        try:
            _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= self.restart_frames:
                # Under steady load the writer appends while a PASSIVE checkpoint copies, so the
                # WAL is never all copied when the next commit starts and never starts over: it
                # would grow until SQLite's own checkpoint. RESTART copies the few frames added
                # since (the writer waits for that much only) and lets the next commit rewind it.
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                self.restarts += 1
        except sqlite3.Error as exc:
            if str(exc) != self.last_error:
                log.warning("journal checkpoint failed (tried again after the next commits): %s", exc)
            self.last_error = str(exc)
            return
        self.last_error = ""
        self.checkpoints += 1
        self.last_ms = (time.perf_counter() - started) * 1000
