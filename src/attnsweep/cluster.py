"""Cluster settings checked before a SLURM sweep submits anything.

profiles/slurm leaves the partition (and the account) to the user and names a GPU model. A missing partition or a
GPU model the partition does not have would otherwise surface only after submission, as one sbatch error per job or
as jobs pending forever; here they stop the run at its start, with the profile key to fix.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROFILE = "profiles/slurm/config.yaml"


class ClusterSettingsError(Exception):
    """Cluster settings that cannot run; the message names the profile key."""


@dataclass
class Partition:
    """What `sinfo` says a partition offers: whether it has GPUs and of which models (GRES types)."""

    gpus: bool = False
    gpu_models: set[str] = field(default_factory=set)


def parse_sinfo(text: str) -> dict[str, Partition]:
    """`sinfo -h -o '%R|%G'` lines ('gpu|gpu:h100:4(S:0-1),shard:8', 'debug|(null)') -> {partition: Partition}."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        name, gres = (s.strip() for s in line.split("|", 1))
        part = partitions.setdefault(name, Partition())
        for item in gres.split(","):
            fields = re.sub(r"\(.*?\)", "", item).strip().split(":")
            if fields[0] != "gpu":
                continue
            part.gpus = True
            # gpu:MODEL:COUNT names a model; gpu:COUNT does not
            if len(fields) == 3 or (len(fields) == 2 and not fields[1].isdigit()):
                part.gpu_models.add(fields[1])
    return partitions


def read_partitions() -> dict[str, Partition]:
    """The partitions of the cluster this host submits to, from `sinfo`."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%R|%G"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ClusterSettingsError(f"cannot list the cluster's partitions with sinfo: {e}") from e
    return parse_sinfo(out)


def job_problems(rule: str, resources: Mapping[str, object], partitions: Mapping[str, Partition]) -> list[str]:
    """What keeps one job of `rule` from being submitted with these resources, each naming its profile key."""
    partition = resources.get("slurm_partition")
    if not partition:
        return [
            f"{PROFILE}: no SLURM partition for rule {rule}: set default-resources: slurm_partition "
            f"(partitions of this cluster: {', '.join(sorted(partitions)) or 'none found'})"
        ]
    partition = str(partition)
    if partition not in partitions:
        return [
            f"{PROFILE}: slurm_partition {partition!r} (rule {rule}) is not a partition of this cluster; "
            f"sinfo lists: {', '.join(sorted(partitions)) or 'none'}"
        ]
    offered = partitions[partition]
    gpus = int(resources.get("gpu") or 0)
    model = resources.get("gpu_model")
    if model:
        if model not in offered.gpu_models:
            have = ", ".join(sorted(offered.gpu_models)) or "none"
            return [
                f"{PROFILE}: gpu_model {model!r} (rule {rule}) is not a GPU model of partition {partition!r}; "
                f"its GPU models (sinfo GRES): {have}"
            ]
    elif gpus and not offered.gpus:
        return [f"{PROFILE}: rule {rule} asks for gpu: {gpus}, but partition {partition!r} has no GPUs"]
    return []


def check_jobs(jobs: Iterable[tuple[str, Mapping[str, object]]], partitions: Mapping[str, Partition]) -> None:
    """Raise one error listing every distinct problem of the jobs (rule, resources) about to be submitted."""
    problems: list[str] = []
    for rule, resources in jobs:
        for p in job_problems(rule, resources, partitions):
            if p not in problems:
                problems.append(p)
    if problems:
        raise ClusterSettingsError("cluster settings: " + "; ".join(problems) + ". Nothing was submitted.")


def scheduler_assigns_gpus(workflow) -> bool:  # noqa: ANN001 (Snakemake's Workflow object)
    """Whether jobs go to a cluster's scheduler (an executor that does not run them here, such as SLURM's), seen
    from the submitting process or from inside a job (Snakemake then runs the job with `--mode remote`, and evaluates
    its params there). The scheduler gives each job its own GPU, so jobs take no GPU slots (gpuslots): the slots'
    lock folder would be shared by jobs on several nodes (over a network file system, where flock is not to be
    relied on), whose GPUs of one index are different GPUs, and a job given GPU 0 would wait for another node's job
    holding "GPU 0", or set CUDA_VISIBLE_DEVICES to a GPU it was not given."""
    return bool(workflow.remote_exec or workflow.non_local_exec)


def check_slurm_submission(workflow) -> None:  # noqa: ANN001 (Snakemake's Workflow object)
    """At the start of a run through Snakemake's SLURM executor: the jobs it will submit, checked against sinfo.

    Called from the workflow's onstart handler, which runs once the jobs to run are known and before the first is
    scheduled; any other executor (local, a dry run, the job step inside a SLURM job) is left alone.
    """
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    jobs = [
        (job.rule.name, dict(job.resources.items()))
        for job in workflow.dag.needrun_jobs()
        if not workflow.is_local(job.rule)
    ]
    if jobs:
        check_jobs(jobs, read_partitions())
