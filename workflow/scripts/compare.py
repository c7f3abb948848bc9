"""Snakemake job: this run's summary.csv beside another run's -> tables/vs-RUN.md, figures/vs-RUN.png
(attnsweep.report.compare)."""

from attnsweep.report import logged
from attnsweep.report.compare import write_comparison

sm = snakemake  # noqa: F821 -- injected by Snakemake's script directive

with logged(sm.log[0]):
    write_comparison(sm.input.summary, sm.input.other, dict(sm.output.items()), sm.params.run, sm.wildcards.other)
