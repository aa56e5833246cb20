"""One writer per workdir: an exclusive lock file recording who holds it.

`acquire(workdir)` creates `workdir/.jaxrlhf.lock` atomically (O_CREAT | O_EXCL) with the holder's host, pid,
start time and command line, and holds an `flock` on it for as long as the lock is held. The kernel drops the
flock when the holder exits in any way (a crash or SIGKILL included), so on the same host a lock file whose flock
is free is stale: it is taken over, with a log line. A second run on a held workdir fails at once with
`LockError` naming the holder. A lock file from another host is never broken (flock may not reach across
hosts, and that run may be alive): the error says how to remove it if that host's run is gone. Where the file
system has no flock, a same-host lock is stale when its pid no longer exists.

Multi-process runs: process 0 takes the lock; the other processes write nothing but their checkpoint shards.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

LOCK_NAME = ".jaxrlhf.lock"


class LockError(RuntimeError):
  """The workdir is held by another run; the message names the holder (host, pid, start time) and the lock file."""


class WorkdirLock:
  """A held workdir lock; `release()` (or leaving the `with` block) frees it, else the process's exit does (the
  file then stays and the next run takes it over as stale). Use `acquire` to make one."""

  def __init__(self, path: str, fd: int, holder: dict):
    self.path = path
    self.holder = holder  # {"host", "pid", "started", "started_unix", "command"} of this process.
    self._fd: int | None = fd

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    """Removes the lock file and drops the flock (idempotent)."""
    if self._fd is None:
      return
    try:
      # Unlink while the flock is still held: an acquirer that opened the old file sees its inode is gone.
      if _same_file(self._fd, self.path):
        os.unlink(self.path)
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """Takes the exclusive lock of `workdir` (created if missing) for this process.

  Returns:
    The held `WorkdirLock` (a context manager).

  Raises:
    LockError: another live run holds it (same host), or a run on another host does (never broken here);
      the message names the holder's host, pid and start time, and the lock file.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "started_unix": time.time(), "command": " ".join(sys.argv)[:500]}
  for _ in range(10):  # Retries only when the file changed under us (a holder released it meanwhile).
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
      fd = _open_existing(path)
      if fd is None:
        continue  # Removed between our create and open: try to create it again.
      try:
        locked = _try_flock(fd)
        if locked is False:
          raise LockError(_held_message(path, _read_holder(fd), "it is running"))
        if not _same_file(fd, path):
          os.close(fd)
          continue  # Released (unlinked) by its holder while we opened it.
        holder = _read_holder(fd)
        _check_stale(path, holder, flock_free=locked is True)
      except BaseException:
        if fd is not None:
          os.close(fd)
        raise
      _write_holder(fd, me)
      return WorkdirLock(path, fd, me)
    if _try_flock(fd) is False:  # Someone opened our fresh file and locked it first: theirs now.
      holder = _read_holder(fd)
      os.close(fd)
      raise LockError(_held_message(path, holder, "it is running"))
    _write_holder(fd, me)
    return WorkdirLock(path, fd, me)
  raise LockError(f"{path}: the lock file kept changing while it was being taken; is another run starting in "
                  f"{workdir}?")


def _open_existing(path: str) -> int | None:
  try:
    return os.open(path, os.O_RDWR)
  except FileNotFoundError:
    return None


def _try_flock(fd: int) -> bool | None:
  """True: this fd now holds the flock; False: another open file holds it; None: no flock on this file system."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
      return None
    raise


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _read_holder(fd: int) -> dict:
  """The holder recorded in the lock file ({} if it is empty or unreadable: a holder died while writing it)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, holder: dict) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, (json.dumps(holder, indent=1) + "\n").encode("utf-8"))
  os.fsync(fd)


def _describe(holder: dict) -> str:
  if not holder:
    return "an unknown run (the lock file is empty or unreadable)"
  return (f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} started {holder.get('started', '?')} "
          f"({holder.get('command', '?')!r})")


def _held_message(path: str, holder: dict, why: str) -> str:
  workdir = os.path.dirname(path)
  return (f"workdir {workdir} is locked by {_describe(holder)}; {why}. One run writes a workdir at a time: wait "
          f"for it, stop it, or use another --workdir (lock file {path})")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # It exists, owned by another user.
  return True


def _check_stale(path: str, holder: dict, *, flock_free: bool) -> None:
  """Returns if the existing lock may be taken over (logging why); raises LockError otherwise."""
  host = socket.gethostname()
  if holder and holder.get("host") != host:
    raise LockError(_held_message(path, holder, f"it is another host's lock, so this host ({host}) cannot tell "
                                  f"whether that run is alive; if it is gone, delete {path} and re-run"))
  pid = holder.get("pid")
  alive = isinstance(pid, int) and _pid_alive(pid)
  if flock_free:
    # The kernel frees the flock when its holder exits, so a same-host holder is gone even if its pid was reused.
    why = "its process is gone" if not alive else f"pid {pid} no longer holds it (a reused pid)"
  elif not alive:  # No flock on this file system: the pid decides.
    why = "its process is gone"
  else:
    raise LockError(_held_message(path, holder, f"pid {pid} is alive on this host"))
  line = f"taking over the stale lock {path} of {_describe(holder)}: {why}"
  logging.warning("%s", line)
  print(f"[lock] {line}", flush=True)
