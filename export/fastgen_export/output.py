"""Where an engine is written: OUT checks, staging, and a crash-safe ``--overwrite``.

An engine is assembled in a staging folder next to OUT and moved into place only once it is complete
(``fastgen.json`` is written last, so a folder with a manifest is a complete engine). Every folder this
module creates lives in OUT's parent and is named after OUT and the creating process::

    .<OUT name>.partial-<pid>-<random>   an engine being written
    .<OUT name>.old-<pid>-<random>       the engine an --overwrite is replacing

The replace (:func:`commit`) is three steps, each a single ``rename`` on one filesystem:

1. ``OUT -> .old-*``      (OUT is missing from here ... )
2. ``.partial-* -> OUT``  ( ... to here: the old engine is complete under .old-*)
3. remove ``.old-*``

So at every instant a complete engine is either at OUT, or (between steps 1 and 2) under ``.old-*``
while the new one is complete under ``.partial-*``. An exception between 1 and 2 renames the old engine
back. A *killed* process cannot, so :func:`recover` - run by every export before it looks at OUT - puts
the newest complete ``.old-*`` engine of a dead process back at OUT when OUT is missing, and removes the
leftovers of dead processes: ``.old-*`` once OUT exists again (a kill between steps 2 and 3: OUT already
holds the new engine) and every ``.partial-*`` (an export killed while writing). Folders of live
processes (another export of the same OUT in progress) are left alone, as is anything not matching
these names exactly. (``.probe-*``: an empty folder :func:`check_output` creates and removes at once
to prove OUT's parent writable.)
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from typing import Any

from fastgen.errors import ExportError

from .manifest import MANIFEST_NAME

__all__ = ["check_output", "recover", "Stage", "commit", "is_engine_dir", "stage_name", "PSEUDO_FILESYSTEMS"]

#: OUT may not be inside these (virtual filesystems: writes there are meaningless or dangerous)
PSEUDO_FILESYSTEMS = ("/proc", "/sys")

Log = Callable[[str], None]


def _silent(msg: str) -> None:
    pass


def is_engine_dir(path: str) -> bool:
    """A real directory (not a link) holding a manifest: what a finished export leaves."""
    return os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, MANIFEST_NAME))


def stage_name(out: str, role: str) -> str:
    """A fresh path ``<parent>/.<name>.<role>-<pid>-<random>`` for ``role`` "partial", "old" or "probe"."""
    parent, name = os.path.split(out)
    return os.path.join(parent, f".{name}.{role}-{os.getpid()}-{secrets.token_hex(4)}")


def _ours(out: str, role: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(os.path.basename(out))}\.{role}-(\d+)-[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _leftovers(out: str, role: str) -> list[str]:
    """Our own ``role`` folders for ``out`` whose creating process is gone, newest first."""
    parent = os.path.dirname(out)
    pattern = _ours(out, role)
    found = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        m = pattern.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):  # never a link, never a file
            found.append((st.st_mtime, path))
    return [p for _, p in sorted(found, reverse=True)]


def recover(out: str, log: Log = _silent) -> None:
    """Repair what killed exports of ``out`` left behind (see the module docstring).

    Raises ExportError only when OUT is missing, a previous engine is waiting under ``.old-*`` and it
    cannot be moved back (the message says where it is).
    """
    out = os.path.abspath(os.fspath(out))
    if not os.path.lexists(out):
        for old in _leftovers(out, "old"):
            if is_engine_dir(old):
                try:
                    os.rename(old, out)
                except OSError as e:
                    raise ExportError(f"{out} is missing after an interrupted --overwrite and the previous engine "
                                      f"is in {old}, which could not be moved back ({e.strerror or e}); move it "
                                      "back by hand") from e
                log(f"restored {out} from {os.path.basename(old)} (an --overwrite was interrupted)")
                break
    # .old-* of dead processes only once OUT holds an engine again; .partial-* / .probe-* always
    roles = ("old", "partial", "probe") if is_engine_dir(out) else ("partial", "probe")
    for role in roles:
        for path in _leftovers(out, role):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                log(f"removed {os.path.basename(path)} (left by an interrupted export)")


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        up = os.path.dirname(path)
        if up == path:
            break
        path = up
    return path


def check_output(out: str | os.PathLike, overwrite: bool, log: Log = _silent) -> str:
    """Validate OUT before any heavy work and return it as an absolute path.

    Creates OUT's parent if needed, proves it writable, repairs interrupted exports (:func:`recover`), and
    refuses an existing OUT unless ``overwrite`` and OUT is a fastgen engine (or an empty directory).
    Raises ExportError naming the path.
    """
    out = os.path.abspath(os.fspath(out))
    name = os.path.basename(out)
    if not name or name in (".", ".."):
        raise ExportError(f"output {out!r} must name a directory to create")
    parent = os.path.dirname(out)
    real_parent = os.path.realpath(_nearest_existing(parent))
    for pseudo in PSEUDO_FILESYSTEMS:
        if real_parent == pseudo or real_parent.startswith(pseudo + os.sep):
            raise ExportError(f"output {out} is inside {pseudo}, a virtual filesystem; choose another path")
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing):
        raise ExportError(f"output {out}: {existing} is not a directory, so {parent} cannot be created")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportError(f"output {out}: cannot create its parent folder {parent}: {e.strerror or e}") from e
    probe = stage_name(out, "probe")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        raise ExportError(f"output {out}: its parent folder {parent} is not writable: {e.strerror or e}") from e
    recover(out, log)
    _check_existing(out, overwrite)
    return out


def _check_existing(out: str, overwrite: bool) -> None:
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ExportError(f"output {out} already exists (use overwrite=True / --overwrite to replace it)")
    if not os.path.isdir(out) or os.path.islink(out):
        raise ExportError(f"output {out} exists and is not a directory; refusing to replace it")
    if os.listdir(out) and not is_engine_dir(out):
        raise ExportError(f"output {out} is a non-empty directory that is not a fastgen engine "
                          f"(no {MANIFEST_NAME}); refusing to overwrite it")


def commit(work: str, out: str, overwrite: bool) -> None:
    """Move the complete engine ``work`` to ``out``, replacing an existing engine crash-safely."""
    if not os.path.lexists(out):
        try:
            os.rename(work, out)
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.lexists(out):
                raise ExportError(f"cannot move the finished engine to {out}: {e.strerror or e}") from e
            # OUT appeared while exporting: treat it as an existing output below
    _check_existing(out, overwrite)  # re-check: it may have appeared or changed while exporting
    old = stage_name(out, "old")
    try:
        os.rename(out, old)                  # 1: OUT missing; the old engine is complete under `old`
    except OSError as e:
        raise ExportError(f"cannot move the previous engine {out} aside: {e.strerror or e}") from e
    try:
        os.rename(work, out)                 # 2: the new engine is at OUT
    except BaseException:
        try:
            os.rename(old, out)
        except OSError as e:
            raise ExportError(f"replacing {out} failed and the previous engine could not be moved back from "
                              f"{old} ({e.strerror or e}); move it back to {out} by hand") from e
        raise
    shutil.rmtree(old, ignore_errors=True)   # 3


class Stage:
    """The staging folder of one export: ``with Stage(out, overwrite) as stage: <write stage.work>; stage.commit()``.

    On leaving the block without :meth:`commit` (an exception, KeyboardInterrupt) the folder is removed.
    """

    def __init__(self, out: str, overwrite: bool):
        self.out, self.overwrite = out, overwrite
        self.work: str | None = None
        self.committed = False

    def __enter__(self) -> Stage:
        self.work = stage_name(self.out, "partial")
        try:
            os.mkdir(self.work)  # 0o777 less the umask, like any folder the user creates
        except OSError as e:
            raise ExportError(f"cannot create a staging folder next to {self.out}: {e.strerror or e}") from e
        return self

    def commit(self) -> None:
        assert self.work is not None
        commit(self.work, self.out, self.overwrite)
        self.committed = True

    def __exit__(self, *exc: Any) -> None:
        if not self.committed and self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
