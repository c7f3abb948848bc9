"""Code stamps: which files a cell runs, their hashes, and the stamps named by them.

A cell is stale when the code it runs or its settings change. Stamps are named by a hash of both, so that file
times (a fresh clone gives every file a new one) never make committed results look stale. Cells record the same
selection's hash (`source_hash`) as their code version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cell_code_files(package: Path = PACKAGE_DIR) -> list[Path]:
    """The files a cell runs: the package's Python files and schemas, less those only the report and the status
    command run (report/, status.py) and the sweep's definition (sweep.py), which no cell imports."""
    skip = {"status.py", "sweep.py"}
    return sorted(
        p for p in package.rglob("*")
        if p.is_file() and (p.suffix == ".py" or p.parent.name == "schemas") and "__pycache__" not in p.parts
        and "report" not in p.relative_to(package).parts[:-1] and p.name not in skip
    )


def file_hashes(root: Path, label: str, files: Sequence[Path]) -> dict[str, str]:
    """{label/relative path: sha256}: names relative to `root`, so the digest is the same on every machine."""
    return {
        f"{label}/{f.relative_to(root).as_posix()}": hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)
    }


def source_hash(package: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the files a cell runs (names and contents), independent of git and file times."""
    h = hashlib.sha256()
    for f in cell_code_files(package):
        h.update(f.relative_to(package).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def make_stamp(kind: str, files: Mapping[str, str], settings: Mapping) -> dict:
    """A stamp: its name carries a digest of the code files and the settings, so any change gives a new name."""
    body = json.dumps({"files": files, "settings": settings}, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return {"name": f"{kind}-{digest}", "digest": digest, "files": dict(files), "settings": dict(settings)}


def sweep_stamps(root: Path, code_label: str, cell_settings: Mapping, report_settings: Mapping) -> dict[str, dict]:
    """{name: stamp} of the cells stamp (the code a cell runs, and the cell settings) and the report stamp (the
    aggregation's code, the workflow's scripts, and its settings). `code_label` is the package source relative to the
    workflow's `root`."""
    code_dir, scripts = root / code_label, root / "workflow" / "scripts"
    if not (code_dir / "__init__.py").is_file():
        raise ValueError(f"code_dir: {code_dir} is not the attnsweep package source (no __init__.py)")
    cells = make_stamp("cells", file_hashes(code_dir, code_label, cell_code_files(code_dir)), cell_settings)
    report_files = {
        **file_hashes(code_dir, code_label, sorted(code_dir.glob("report/*.py"))),
        **file_hashes(scripts, "workflow/scripts", sorted(scripts.glob("*.py"))),
    }
    return {s["name"]: s for s in (cells, make_stamp("report", report_files, report_settings))}
