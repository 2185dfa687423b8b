"""Atomic output: write to a temporary file in the destination folder, then rename over it.

A killed process never leaves a half-written file under the final name, and the rename is
atomic on POSIX file systems (same directory => same file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                                        dir=path.parent)
    except OSError as e:  # (named by the output, not by the hidden temporary file)
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give the result ordinary permissions (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None and Path(e.filename).name.startswith(f".{path.name}."):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def require_file(path: str | os.PathLike, missing: str = "file not found") -> None:
    """Refuse a path that is not a regular file, in one line: missing, a folder, or a FIFO, socket
    or device (opening a FIFO would wait for a writer forever)."""
    import stat

    from .errors import InputError

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: not a regular file (a FIFO, socket or device); eqcryo reads regular files only")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (resolving links), whether or not ``b`` exists."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def check_writable(output: str | os.PathLike) -> None:
    """Raise :class:`InputError` now (not after the work) if ``output`` cannot be created: a
    folder on its path is a regular file, or it is itself a folder."""
    from .errors import InputError

    p = Path(output)
    if p.is_dir():
        raise InputError(f"{output}: is a folder; give a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{output}: cannot be written: {parent} is a file, not a folder")
            break


def refuse_overwriting_inputs(output: str | os.PathLike | None, inputs: list, tables: tuple = ()) -> None:
    """Raise :class:`InputError` if ``output`` names any of ``inputs`` or any file the particle
    ``tables`` reference (their image stacks): never clobber user data."""
    from .errors import InputError

    if output is None:
        return
    check_writable(output)
    for i in inputs:
        if i is not None and same_file(output, i):
            raise InputError(f"{output}: refusing to overwrite the input file {i}; choose another output path")
    for t in tables:
        for f in t.referenced_files():
            if same_file(output, f):
                raise InputError(f"{output}: refusing to overwrite {f}, an image stack that {t.source} "
                                 f"references; choose another output path")
