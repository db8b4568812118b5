"""Lock files that give each part of a token store one writer at a time.

Layout, inside the store: `locks/<part name>.lock` while a process encodes that input shard,
`locks/_store.lock` while a process creates, overwrites or finalizes the whole store (part
names never start with "_"). A lock file is a small JSON record of its holder: pid, host name,
since when (local time, seconds), the process's own start time (Linux, to tell a reused pid),
its PID namespace and the kernel's boot id (Linux, to tell containers and reboots apart),
what it is doing ("encoding", "finalizing", ...) and a random token.

Rules:
- `Locks.acquire` takes every lock it is given or none: when one is held by a live process it
  releases what this call took and raises `LockBusy`, one sentence naming the holder.
- A lock file is created atomically: on local disks a complete temporary file is hard-linked
  to its name, which fails when the name exists (also on NFS), so of two racing processes
  exactly one gets it and nobody ever reads a half-written lock.
- A lock already held by this very process (same pid, host, start time, PID namespace and
  boot id) is borrowed: it counts as taken and stays with its first taker, which releases
  it. This is how a single-process encode finalizes its own store while it holds every part.
- Stale locks: a holder on this host in this PID namespace whose pid is gone (or a zombie, or
  the pid now belongs to a newer process) is dead, and so is a holder on this host from
  before a reboot (another boot id); its lock is taken over with a message on stderr. A
  holder on another host, or in another PID namespace of this host (another container with
  the same host name, whose pids mean other processes), is never presumed dead; the message
  names the lock file to delete once that process is known to be gone. Lock files of older
  gtok versions, without namespace and boot id, count as this namespace and boot.
- `release` deletes this object's lock files, then `locks/` when it is empty; `with` releases
  on exceptions and Ctrl-C too. A killed process leaves its locks behind: they are stale.
- Finalize deletes every part lock once the store is complete (`remove_part_locks`): the parts
  are gone, and a writer that still runs can add nothing to a complete store.

Limits on fsspec stores (object stores): exclusive creation uses open mode "xb" where the
filesystem implements it (the local and memory filesystems, s3fs/gcsfs versions with
conditional writes); elsewhere it is check-then-write, so two writers that start within the
same instant can both get a lock. A stale lock there is deleted, not renamed, so two processes
that take over the same stale lock at the same moment can both win. Use distinct
`--shard-id`s to be safe on such stores.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from gtok.console import console, is_quiet
from gtok.errors import GtokError
from gtok.safeload import Unreadable, parse_json
from gtok.store.location import Location

__all__ = ["FOLDER", "STORE", "Holder", "LockBusy", "Locks", "key", "remove_part_locks"]

FOLDER = "locks"
STORE = "_store"  # the store-wide lock (creating, overwriting, finalizing); parts: part name


def key(name: str) -> str:
    """The object key of lock `name` below the store."""
    return f"{FOLDER}/{name}.lock"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of `pid` from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (command)": state is field 3
    return fields[0], int(fields[19])  # starttime is field 22


def _pid_namespace() -> str | None:
    """This process's PID namespace ("pid:[4026531836]"; Linux), or None where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    """The kernel's boot id (a new random UUID at every boot; Linux), or None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: the process and since when. `pid_namespace` and `boot_id` are None
    where unknown, and in lock files of older gtok versions."""

    pid: int
    host: str
    since: str
    process_start: int | None
    activity: str
    token: str
    pid_namespace: str | None = None
    boot_id: str | None = None

    @classmethod
    def this_process(cls, activity: str) -> Holder:
        stat = _proc_stat(os.getpid())
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
            process_start=None if stat is None else stat[1],
            activity=activity,
            token=uuid.uuid4().hex,
            pid_namespace=_pid_namespace(),
            boot_id=_boot_id(),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder recorded in a lock file (extra fields ignored, the optional ones may be
        missing), or None when it is not a valid record."""
        try:
            record = parse_json(data, "a lock file")
            return cls(
                **{name: record[name] for name in cls.__dataclass_fields__ if name in record}
            )
        except (Unreadable, TypeError, KeyError):
            return None

    def same_process(self, other: Holder) -> bool:
        return self._identity() == other._identity()

    def _identity(self) -> tuple:
        return (self.pid, self.host, self.process_start, self.pid_namespace, self.boot_id)

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def in_other_namespace(self) -> bool:
        """Whether the holder ran in another PID namespace than this process (another
        container): its pid means another process here. Unknown namespaces count as ours."""
        here = _pid_namespace()
        return None not in (self.pid_namespace, here) and self.pid_namespace != here

    def before_reboot(self) -> bool:
        """Whether the holder ran before this machine last booted (another boot id)."""
        here = _boot_id()
        return None not in (self.boot_id, here) and self.boot_id != here

    def is_gone(self) -> bool:
        """Whether the holder is known to be dead (only decidable on this host, and in this
        PID namespace unless the machine rebooted since)."""
        if not self.on_this_host():
            return False
        if self.before_reboot():
            return True
        if self.in_other_namespace():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        stat = _proc_stat(self.pid)
        if stat is None:
            return False
        state, started = stat
        reused = self.process_start is not None and started != self.process_start
        return state in "ZX" or reused

    def describe(self) -> str:
        where = f"{self.host} in another PID namespace" if self.in_other_namespace() else self.host
        return f"process {self.pid} on {where} ({self.activity}, since {self.since})"


class LockBusy(GtokError):
    """A lock is held by another live process."""


class Locks:
    """The lock files one process holds in one store; `release` (or `with`) gives them back."""

    def __init__(self, location: Location, activity: str) -> None:
        self.location = location
        self.me = Holder.this_process(activity)
        self.taken: list[str] = []  # lock names this object created, to delete on release
        self.held: set[str] = set()  # taken or borrowed from this process's other holders

    def __enter__(self) -> Locks:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self, names: Mapping[str, str], *, advice: str, wait: float = 0.0) -> None:
        """Take every lock in `names` (lock name -> what it guards, e.g. "input shard a.tar of
        /data/t.zarr") or none of them; waits up to `wait` seconds for each busy one, then
        raises `LockBusy`: "<what> is in use by <holder>; <advice>"."""
        created: list[str] = []
        borrowed: list[str] = []
        stale: list[tuple[str, Holder | None]] = []  # (what, dead holder) of locks taken over
        try:
            for name, what in names.items():
                if name in self.held:
                    continue
                taken = self._take(name, what, advice, wait, stale)
                (created if taken else borrowed).append(name)
                self.held.add(name)
        except BaseException:
            self._delete(created)
            self.held.difference_update(created + borrowed)
            raise
        self.taken += created
        if stale and not is_quiet():
            console.print(_stale_message(stale), soft_wrap=True)

    def release(self) -> None:
        """Delete the lock files this object created (then `locks/` if that leaves it empty)."""
        taken, self.taken = self.taken, []
        self.held.clear()
        self._delete(taken)

    def _delete(self, names: list[str]) -> None:
        for name in names:
            if self._is_mine(name):
                self.location.remove(key(name))
        if names and self.location.is_local:
            with contextlib.suppress(OSError):  # not empty (other holders) or already gone
                (self.location.path / FOLDER).rmdir()

    def _is_mine(self, name: str) -> bool:
        raw = self.location.read(key(name))
        holder = None if raw is None else Holder.from_bytes(raw)
        return holder is not None and holder.token == self.me.token

    def _take(
        self, name: str, what: str, advice: str, wait: float, stale: list[tuple[str, Holder | None]]
    ) -> bool:
        """True: this call created the lock; False: this process already holds it. Locks of
        dead holders are taken over and listed in `stale`."""
        deadline = time.monotonic() + wait
        while True:
            if self.location.create(key(name), self.me.to_bytes()):
                return True
            raw = self.location.read(key(name))
            if raw is None:  # released between our two looks: try again
                continue
            holder = Holder.from_bytes(raw)
            if holder is not None and holder.same_process(self.me):
                return False
            if holder is None or holder.is_gone():
                self._take_over(name, raw)
                stale.append((what, holder))
            elif time.monotonic() < deadline:
                time.sleep(0.05)
            else:
                raise LockBusy(_busy_message(self.location, name, what, holder, advice))

    def _take_over(self, name: str, raw: bytes) -> None:
        """Delete the stale lock file `name` whose bytes were `raw`, unless it changed."""
        if not self.location.is_local:
            if self.location.read(key(name)) == raw:
                self.location.remove(key(name))
        else:
            path = self.location.path / key(name)
            moved = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
            try:
                path.rename(moved)  # atomic: of several processes taking over, one moves it
            except FileNotFoundError:
                return
            if moved.read_bytes() != raw:  # a new holder's lock, created since we looked
                with contextlib.suppress(FileExistsError):
                    os.link(moved, path)
            moved.unlink()


def remove_part_locks(location: Location) -> None:
    """Delete everything in `locks/` but the store-wide lock: once a store is complete its
    parts are gone, and so is what their locks (and a crash's leftovers there) guarded."""
    for name in location.names(FOLDER):
        if name != f"{STORE}.lock":
            location.remove(f"{FOLDER}/{name}")


def _stale_message(stale: list[tuple[str, Holder | None]]) -> str:
    what, holder = stale[0]
    who = "an unreadable lock file" if holder is None else holder.describe()
    more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
    return f"took over the stale lock of {what}{more}: {who} is gone"


def _busy_message(location: Location, name: str, what: str, holder: Holder, advice: str) -> str:
    message = f"{what} is in use by {holder.describe()}; {advice}"
    if not holder.on_this_host() or holder.in_other_namespace():
        message += f" (if that process is gone, delete {location}/{key(name)})"
    return message + "."
