"""Where commands write: checked before any work, written so that a reader never sees half of it.

Every command checks its output paths first (`check_output_folder`, `check_output_file`), so that an
unwritable folder, an `--out` that is a file, or a folder where a table should go is one clear error before
minutes of work, not a traceback after them. `write_together` writes several files that belong together (a
run's tables and run.json) so that none is replaced before all are written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from melt.errors import MeltError

TABLE_SUFFIXES = (".parquet", ".csv")


def check_output_folder(path: str | Path, *, option: str = "--out") -> Path:
    """The folder `path`, created if needed and checked writable; a `MeltError` naming it otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MeltError(f"{option} must be a folder, but this is a file", file=path)
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise MeltError(f"cannot create the {option} folder: {ancestor} is a file", file=path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".melt-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MeltError(f"cannot write in the {option} folder: {exc.strerror or exc}", file=path) from exc
    return path


def check_output_file(
    path: str | Path, *, option: str = "--out", suffixes: Sequence[str] = TABLE_SUFFIXES
) -> Path:
    """The file `path` checked before any work: the right suffix, not a folder, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise MeltError(f"{option} must be a {' or '.join(suffixes)} file, but this is a folder", file=path)
    if path.suffix not in suffixes:
        raise MeltError(f"{option} must end in {' or '.join(suffixes)}", file=path)
    check_output_folder(path.parent, option=f"{option} file's")
    return path


def write_together(writers: Mapping[Path, Callable[[Path], None]]) -> list[Path]:
    """Write each file through a temporary file in its folder, and rename them into place only once all are
    written: a failure (a full disk) leaves every old version as it was, and no temporary behind."""
    temporaries: dict[Path, Path] = {}
    current = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path, write in writers.items():
            current = path
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temporaries[path] = Path(name)
            write(Path(name))
            # mkstemp creates the file 0600; give it the mode a plain open() would have.
            os.chmod(name, 0o666 & ~umask)
        for path in temporaries:
            current = path
            if path.is_dir():
                raise MeltError("is a folder, cannot be replaced by a file", file=path)
        for path, temporary in temporaries.items():
            current = path
            os.replace(temporary, path)
    except OSError as exc:
        raise MeltError(f"cannot write: {exc.strerror or exc}", file=current) from exc
    finally:
        for temporary in temporaries.values():
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return list(writers)
