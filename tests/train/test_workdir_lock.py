"""One writer per workdir: a second process fails naming the holder, a crashed or dead holder's lock is taken
over with a log line, another host's lock is never broken."""

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from jaxrlhf.train import workdir_lock

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LockError = workdir_lock.LockError

# Imports the module by path: the subprocesses start in a fraction of a second (no JAX import).
_PRELUDE = textwrap.dedent(f"""
  import importlib.util, sys, time
  spec = importlib.util.spec_from_file_location("workdir_lock", {str(REPO_ROOT / "jaxrlhf/train/workdir_lock.py")!r})
  workdir_lock = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(workdir_lock)
""")
_HOLD = _PRELUDE + textwrap.dedent("""
  lock = workdir_lock.acquire(sys.argv[1])
  print("locked", flush=True)
  sys.stdin.read()  # Holds until the test closes stdin (or kills it).
  lock.release()
""")
_TRY = _PRELUDE + textwrap.dedent("""
  try:
    with workdir_lock.acquire(sys.argv[1]):
      print("acquired", flush=True)
  except workdir_lock.LockError as e:
    print("LockError:", e, flush=True)
    sys.exit(3)
""")


def _python(script, workdir, **kwargs):
  return subprocess.Popen([sys.executable, "-c", script, str(workdir)], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, **kwargs)


def _dead_pid():
  """A pid that existed on this host and is gone."""
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_second_process_fails_naming_the_holder(tmp_path):
  holder = _python(_HOLD, tmp_path, stdin=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == "locked"
    second = _python(_TRY, tmp_path)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 3, err
    assert f"pid {holder.pid}" in out and f"host {socket.gethostname()}" in out and "started 20" in out
    assert str(tmp_path / workdir_lock.LOCK_NAME) in out
    with pytest.raises(LockError, match=f"pid {holder.pid}"):  # Also from this (a third) process.
      workdir_lock.acquire(str(tmp_path))
    holder.stdin.close()  # The holder releases: the workdir is free and the lock file gone.
    assert holder.wait(timeout=60) == 0
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
    third = _python(_TRY, tmp_path)
    assert third.communicate(timeout=60)[0].strip() == "acquired" and third.returncode == 0
  finally:
    holder.kill()


def test_a_killed_holder_frees_the_workdir(tmp_path, capsys):
  holder = _python(_HOLD, tmp_path, stdin=subprocess.PIPE)
  assert holder.stdout.readline().strip() == "locked"
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait(timeout=60)
  assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == holder.pid  # Left behind.
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.held
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
  out = capsys.readouterr().out
  assert f"taking over the stale lock {tmp_path / workdir_lock.LOCK_NAME}" in out and f"pid {holder.pid}" in out
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path, capsys):
  pid = _dead_pid()
  stale = {"host": socket.gethostname(), "pid": pid, "started": "2024-01-01T00:00:00+00:00", "command": "x"}
  (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(stale))
  lock = workdir_lock.acquire(str(tmp_path))
  out = capsys.readouterr().out
  assert "[lock] taking over the stale lock" in out and f"pid {pid} started 2024-01-01" in out
  assert "its process is gone" in out
  with pytest.raises(LockError, match=f"pid {os.getpid()}"):  # Held now, even against this same process.
    workdir_lock.acquire(str(tmp_path))
  lock.release()
  lock.release()  # Idempotent.
  workdir_lock.acquire(str(tmp_path)).release()


def test_empty_lock_file_of_a_holder_that_died_while_writing_it_is_taken_over(tmp_path, capsys):
  (tmp_path / workdir_lock.LOCK_NAME).write_text("")
  workdir_lock.acquire(str(tmp_path)).release()
  assert "an unknown run" in capsys.readouterr().out


def test_lock_of_another_host_is_not_broken(tmp_path):
  other = {"host": "some-other-host", "pid": 4242, "started": "2024-01-01T00:00:00+00:00", "command": "run"}
  path = tmp_path / workdir_lock.LOCK_NAME
  path.write_text(json.dumps(other))
  with pytest.raises(LockError) as e:
    workdir_lock.acquire(str(tmp_path))
  msg = str(e.value)
  assert "host some-other-host pid 4242 started 2024-01-01" in msg and f"delete {path}" in msg
  assert json.loads(path.read_text()) == other  # Untouched.


def test_live_pid_that_does_not_hold_the_flock_is_a_reused_pid(tmp_path, capsys):
  # The pid recorded is alive (our parent) but holds no flock on the file: the original holder exited and its
  # pid was reused. The flock, not the pid, decides on this host.
  live = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2024-01-01T00:00:00+00:00"}
  (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(live))
  workdir_lock.acquire(str(tmp_path)).release()
  assert f"pid {os.getppid()} no longer holds it (a reused pid)" in capsys.readouterr().out


def _no_flock(monkeypatch):
  """A file system without flock (some network mounts): flock fails with ENOLCK."""

  def flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(workdir_lock.fcntl, "flock", flock)


def test_without_flock_a_live_pid_holds_and_a_dead_one_does_not(tmp_path, monkeypatch, capsys):
  """Where flock is unavailable the recorded pid decides: alive on this host -> LockError, gone -> taken over."""
  _no_flock(monkeypatch)
  path = tmp_path / workdir_lock.LOCK_NAME
  live = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2024-01-01T00:00:00+00:00"}
  path.write_text(json.dumps(live))
  with pytest.raises(LockError, match=f"pid {os.getppid()} is alive on this host"):
    workdir_lock.acquire(str(tmp_path))
  assert json.loads(path.read_text()) == live  # Untouched.
  dead = {**live, "pid": _dead_pid()}
  path.write_text(json.dumps(dead))
  with workdir_lock.acquire(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  assert f"pid {dead['pid']}" in capsys.readouterr().out


def test_a_pid_of_another_user_counts_as_alive(monkeypatch):
  """kill(pid, 0) answers EPERM for another user's live process: it exists."""

  def kill(pid, sig):
    raise PermissionError(errno.EPERM, "Operation not permitted")

  monkeypatch.setattr(workdir_lock.os, "kill", kill)
  assert workdir_lock._pid_alive(12345) is True


def test_a_long_stale_record_is_replaced_whole(tmp_path):
  """Taking over a lock file whose old record is longer than ours leaves only our record (valid JSON)."""
  stale = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "2024-01-01T00:00:00+00:00",
           "command": "x" * 5000}
  path = tmp_path / workdir_lock.LOCK_NAME
  path.write_text(json.dumps(stale))
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert json.loads(path.read_text()) == json.loads(json.dumps(lock.holder))
