"""A copy of the workflow in a temporary folder, for tests that run Snakemake on it (shared by the test modules)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path, config: dict | None, *, with_source: bool = False, name: str = "config.yaml") -> Path:
    """The workflow (Snakefile, workflow/, config/, envs/, profiles/) with `config` written to config/`name`
    (None keeps the shipped config/config.yaml).

    Jobs import the installed attnsweep either way (an editable install of REPO); the source is only hashed into
    the stamps. Without a copy of it, code_dir points at the real package, which is enough for dry runs that edit
    no code.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake")
    for d in ("workflow", "config", "envs", "profiles"):
        shutil.copytree(REPO / d, dest / d, ignore=ignore)
    if with_source:
        shutil.copytree(REPO / "src" / "attnsweep", dest / "src" / "attnsweep", ignore=ignore)
    if config is None:
        return dest
    config = copy.deepcopy(config)
    if not with_source:
        config.setdefault("code_dir", str(REPO / "src" / "attnsweep"))
    (dest / "config" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return dest
