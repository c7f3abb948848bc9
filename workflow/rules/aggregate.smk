# From cell JSONs to the summary table, the markdown tables, the figures and the report's headline of results/{run}/.

from attnsweep.report.report_path import report_path_problem, snakemake_command


rule summary:
    input:
        stamp=ancient(REPORT_STAMP),
        cells=PRESENT_CELLS,
        repeats=PRESENT_REPEATS,
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


# compare_with: this run beside each other run named, cell by cell (attnsweep.report.compare).
rule compare:
    input:
        stamp=ancient(REPORT_STAMP),
        summary=SUMMARY,
        # ancient: its content is in the report stamp (common.smk), its file time is not.
        other=lambda wildcards: ancient(COMPARED[wildcards.other]),
    output:
        table=report(
            comparison_paths(RESULTS, "{other}")["table"],
            caption="../report/table_vs.rst",
            category="Tables",
            labels={"table": "vs {other}"},
        ),
        figure=report(
            comparison_paths(RESULTS, "{other}")["figure"],
            caption="../report/figure_vs.rst",
            category="Figures",
            labels={"figure": "vs {other}"},
        ),
    log:
        f"{RESULTS}/logs/compare-{{other}}.log",
    wildcard_constraints:
        other="|".join(map(re.escape, COMPARED)) or "(?!)",
    conda:
        "../../envs/attnsweep.yaml"
    params:
        run=RUN,
    script:
        "../scripts/compare.py"


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


# The report's first page (workflow/report/workflow.rst includes it): what was measured, the fastest implementation
# per model, context and mode, and where the tables and figures are.
rule headline:
    input:
        stamp=ancient(REPORT_STAMP),
        summary=SUMMARY,
    output:
        report(
            HEADLINE_FILE,
            caption="../report/headline.rst",
            category="Headline",
        ),
    log:
        f"{RESULTS}/logs/headline.log",
    conda:
        "../../envs/attnsweep.yaml"
    params:
        results=lambda wildcards, output: str(Path(output[0]).parent),
    script:
        "../scripts/headline.py"


# `snakemake --report PATH` is checked when the workflow is read: see attnsweep.report.report_path.
REPORT_PATH_PROBLEM = report_path_problem(
    sys.argv[1:], RESULTS, snakemake_command(sys.argv[0])
)
if REPORT_PATH_PROBLEM:
    raise WorkflowError(REPORT_PATH_PROBLEM)
