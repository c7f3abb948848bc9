# From cell JSONs to the summary table, the markdown tables and the figures of results/{run}/.


rule summary:
    input:
        stamp=ancient(REPORT_STAMP),
        cells=PRESENT_CELLS,
    output:
        report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../../envs/attnsweep.yaml"
    params:
        allow_mixed_env=PLAN.settings["allow_mixed_env"],
        run=RUN,
        missing=MISSING_CELLS,
    script:
        "../scripts/summary.py"


rule tables:
    input:
        stamp=ancient(REPORT_STAMP),
        summary=SUMMARY,
    output:
        **{
            name: report(
                path,
                caption=f"../report/table_{name}.rst",
                category="Tables",
                labels={"table": name},
            )
            for name, path in TABLES.items()
        },
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../../envs/attnsweep.yaml"
    script:
        "../scripts/tables.py"


rule figures:
    input:
        stamp=ancient(REPORT_STAMP),
        summary=SUMMARY,
    output:
        **{
            name: report(
                path,
                caption=f"../report/figure_{name}.rst",
                category="Figures",
                labels={"figure": name},
            )
            for name, path in FIGURES.items()
        },
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../../envs/attnsweep.yaml"
    script:
        "../scripts/figures.py"
