"""Cell JSON files: the schema check where data crosses a boundary, and writes that are never half-done."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import jsonschema

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "cell.schema.json"


@lru_cache(maxsize=1)
def cell_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_cell(data: dict, *, source: str = "cell") -> None:
    """Raise ValueError naming `source` and the offending field if `data` is not a valid cell record."""
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ValueError(
            f"{source}: schema_version {data.get('schema_version')!r}, this attnsweep reads {SCHEMA_VERSION}"
        )
    try:
        jsonschema.validate(data, cell_schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"{source}: not a valid cell record at {where}: {e.message}") from None


def load_cell(path: str | os.PathLike) -> dict:
    """Read and validate one cell JSON; a truncated, non-JSON or foreign file raises ValueError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno}); truncated or corrupt") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason}); corrupt") from None
    validate_cell(data, source=str(path))
    return data


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_temporary(path: str | os.PathLike, suffix: str = "") -> Iterator[tuple[int, Path]]:
    """A temporary file beside `path`, `.NAME.XXXX.tmp` + `suffix`, renamed onto `path` once the block has ended
    without an error and removed if it raises: a reader of `path` sees the old file or the new one, never part of one.
    Yields the temporary's descriptor, open for writing, which the block closes, and its path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a result is as readable as any file written with open().
        os.fchmod(fd, 0o666 & ~_umask())
        yield fd, Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader sees all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_temporary(path) as (fd, _), os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(path: str | os.PathLike, suffix: str = "") -> list[Path]:
    """Remove what writers of `path` killed mid-write left: atomic_temporary's `.NAME.*.tmp` + `suffix` (no suffix
    for write_json_atomic's). Called by the job that owns `path` before it writes (a workflow runs one job per
    output), so a sweep killed with SIGKILL leaves no temporary behind once the cell is measured again. Returns the
    removed files."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp{suffix}")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_cell(path: str | os.PathLike, data: dict) -> None:
    """Validate, then write atomically: an invalid record never reaches the results folder."""
    validate_cell(data, source=str(path))
    write_json_atomic(path, data)
