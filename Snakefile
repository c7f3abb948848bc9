# attnsweep: GPT-2 training throughput across attention implementations, compiled and eager.
# Layout after the snakemake-workflows template: rules by stage in workflow/rules, helpers and targets in common.smk.
# Run: snakemake --cores 1 --resources gpu=1   (profiles/default adds keep-going; then: snakemake --report report.html)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Aggregation runs where Snakemake runs, not as cluster jobs (profiles/slurm).
localrules:
    code_stamp,
    rerun,
    summary,
    tables,
    compare,
    figures,
    headline,


rule all:
    default_target: True
    input:
        ALL_TARGETS,


include: "workflow/rules/cells.smk"
include: "workflow/rules/aggregate.smk"
