# One job per grid cell, plus the code stamps that decide when cells and aggregations are stale.


rule code_stamp:
    output:
        f"{RESULTS}/stamps/{{kind}}-{{digest}}.json",
    log:
        f"{RESULTS}/logs/stamps/{{kind}}-{{digest}}.log",
    wildcard_constraints:
        kind="cells|report",
        digest="|".join(s["digest"] for s in STAMPS.values()),
    conda:
        "../../envs/attnsweep.yaml"
    params:
        text=stamp_text,
    # Stamps of other code go: reverting to that code later must rerun its cells, not find its old stamp.
    shell:
        "find $(dirname {output:q}) -name '{wildcards.kind}-*.json' "
        "! -name '{wildcards.kind}-{wildcards.digest}.json' -print -delete > {log:q} 2>&1; "
        "printf '%s\\n' {params.text:q} > {output:q}"


# aggregate_only: no cell is measured; the cell files already there are the aggregation's plain inputs.
if not AGGREGATE_ONLY:

    rule cell:
        input:
            # ancient: a fresh clone's new mtimes do not make cells stale; a new stamp name does (see common.smk).
            stamp=ancient(CELL_STAMP),
        output:
            json=f"{RESULTS}/cells/{PARAMSPACE.wildcard_pattern}/cell.json",
        log:
            f"{RESULTS}/logs/cells/{PARAMSPACE.wildcard_pattern}/cell.log",
        benchmark:
            f"{RESULTS}/benchmarks/cells/{PARAMSPACE.wildcard_pattern}/cell.tsv"
        wildcard_constraints:
            **AXIS_CONSTRAINTS,
        retries: 0
        conda:
            "../../envs/attnsweep.yaml"
        # Every core it is given: no other job shares the machine while a cell is timed, and on the CPU its
        # training uses them all (Snakemake sets OMP_NUM_THREADS to a job's threads; the cell records it).
        threads: workflow.cores
        resources:
            gpu=GPU_PER_CELL,
        params:
            options=cell_options,
        message:
            CELL_MESSAGE
        # Each cell in its own process: a fresh CUDA context and compile cache. Exit 0 for ok/oom/unsupported/
        # diverged (results); nonzero is a crash, which fails this job and keeps its log.
        shell:
            "python -m attnsweep cell {params.options} --out {output.json:q} > {log:q} 2>&1"
