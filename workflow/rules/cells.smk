# One cell per grid point, in two stages (config `warmup`): a warm-up job finds the batch size and fills the cell's
# own compile cache, several at a time; then the timed job measures with that cache. Each repeat of a cell (config
# `repeats`) has its own warm-up and timed job. Plus the code stamps that decide when cells are stale.


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
    # Stamps of other code go: reverting to that code later must rerun its cells, not find its old stamp. Their logs
    # go with them (this one lists the stamps it removed).
    shell:
        "find $(dirname {output:q}) -name '{wildcards.kind}-*.json' "
        "! -name '{wildcards.kind}-{wildcards.digest}.json' -print -delete > {log:q} 2>&1; "
        "find $(dirname {log:q}) -name '{wildcards.kind}-*.log' "
        "! -name '{wildcards.kind}-{wildcards.digest}.log' -delete >> {log:q} 2>&1; "
        "printf '%s\\n' {params.text:q} > {output:q}"


# aggregate_only: no cell is measured; the cell files already there are the aggregation's plain inputs.
if not AGGREGATE_ONLY and WARMUP:

    rule warmup:
        input:
            stamp=ancient(CELL_STAMP),
            # Repeats 2, 3, ...: repeat 1's record, whose batch size they share (nothing for repeat 1).
            first=first_repeat,
            # A kept warm-up of a record measured again is made again (common.smk).
            rerun=stale_markers,
        output:
            # temp: the cache is the cell's alone and is removed once its timed job has used it.
            json=temp(
                f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/warmup.json"
            ),
            cache=temp(
                directory(
                    f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/cache"
                )
            ),
        log:
            f"{RESULTS}/logs/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/warmup.log",
        benchmark:
            f"{RESULTS}/benchmarks/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/warmup.tsv"
        wildcard_constraints:
            **AXIS_CONSTRAINTS,
            repeat=r"[1-9][0-9]*",
        # The cells `first` names first, and a started cell's later repeats before a new cell (sweep.RunPlan.priority).
        priority: warmup_priority
        conda:
            "../../envs/attnsweep.yaml"
        threads: WARMUP_THREADS
        resources:
            gpu=PLAN.warmup_gpus(),
            expected_s=expected_warmup_s,
            first_grace_s=first_grace_s,
        params:
            options=cell_options,
            first=batch_from_option,
            search_log=search_log,
            start_check=START_BEFORE_DEADLINE,
            estimate_again=estimate_warmup_again,
        shell:
            "bash {params.start_check:q} --grace={resources.first_grace_s} {resources.expected_s} "
            "{params.estimate_again} > {log:q} 2>&1 && "
            "python -m attnsweep warmup {params.options} {params.first} --cache {output.cache:q} "
            "--search-log {params.search_log:q} --out {output.json:q} >> {log:q} 2>&1"


if not AGGREGATE_ONLY:

    # A stale record (common.smk's STALE: measured by other code or settings) is measured again wherever the sweep
    # resumes, whatever Snakemake's metadata there knows: this job's marker is a target and an input of the
    # record's job. It holds nothing (what it would say, Snakemake would compare as params). A successful run
    # removes the markers (onsuccess).
    rule rerun:
        output:
            f"{RESULTS}/.rerun/{PARAMSPACE.wildcard_pattern}/{{record}}.txt",
        log:
            f"{RESULTS}/logs/rerun/{PARAMSPACE.wildcard_pattern}/{{record}}.log",
        wildcard_constraints:
            **AXIS_CONSTRAINTS,
            record=r"cell|repeat-[0-9]+",
        priority: rerun_priority
        conda:
            "../../envs/attnsweep.yaml"
        shell:
            "touch {output:q} 2> {log:q}"

    rule cell:
        input:
            # ancient: a fresh clone's new mtimes do not make cells stale; a new stamp name does (see common.smk).
            stamp=ancient(CELL_STAMP),
            # A kept record of other code or settings is measured again (rule rerun).
            rerun=rerun_input,
            warmup=(
                f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r1/warmup.json"
                if WARMUP
                else []
            ),
            cache=(
                f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r1/cache"
                if WARMUP
                else []
            ),
        output:
            json=f"{RESULTS}/cells/{PARAMSPACE.wildcard_pattern}/cell.json",
        log:
            f"{RESULTS}/logs/cells/{PARAMSPACE.wildcard_pattern}/cell.log",
        benchmark:
            f"{RESULTS}/benchmarks/cells/{PARAMSPACE.wildcard_pattern}/cell.tsv"
        wildcard_constraints:
            **AXIS_CONSTRAINTS,
        # A timed cell is started as soon as its warm-up is done: the GPU waits for nothing.
        priority: timed_priority
        retries: 0
        conda:
            "../../envs/attnsweep.yaml"
        threads: CELL_THREADS
        resources:
            gpu=1 if DEVICE == "cuda" else 0,
            expected_s=expected_timed_s,
        params:
            options=cell_options,
            stage=stage_options,
            start_check=START_BEFORE_DEADLINE,
        message:
            CELL_MESSAGE
        # Exit 0 for ok/oom/unsupported/diverged (results); nonzero is a crash, which fails this job and keeps its
        # log, or 3: not started, as it would end after ATTNSWEEP_DEADLINE, or 4: its warm-up was made with other
        # packages and is removed, to be made again (the log says which).
        shell:
            "bash {params.start_check:q} {resources.expected_s} > {log:q} 2>&1 && "
            "python -m attnsweep cell {params.options} {params.stage} --out {output.json:q} > {log:q} 2>&1"

    # Repeats 2, 3, ... of a cell: the same job, with a warm-up of their own (cold: at repeat 1's batch size).
    use rule cell as cell_repeat with:
        input:
            stamp=ancient(CELL_STAMP),
            rerun=rerun_input,
            warmup=(
                f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/warmup.json"
                if WARMUP
                else []
            ),
            cache=(
                f"{RESULTS}/warmup/{PARAMSPACE.wildcard_pattern}/r{{repeat}}/cache"
                if WARMUP
                else []
            ),
            # Cold: repeat 1's record, whose batch size a later repeat shares (its warm-up takes it otherwise).
            first=[] if WARMUP else first_repeat,
        output:
            json=f"{RESULTS}/cells/{PARAMSPACE.wildcard_pattern}/repeat-{{repeat}}.json",
        log:
            f"{RESULTS}/logs/cells/{PARAMSPACE.wildcard_pattern}/repeat-{{repeat}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/cells/{PARAMSPACE.wildcard_pattern}/repeat-{{repeat}}.tsv"
        wildcard_constraints:
            **AXIS_CONSTRAINTS,
            repeat=r"[2-9]|[1-9][0-9]+",
