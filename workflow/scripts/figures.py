"""Snakemake job: summary.csv -> PNG figures (attnsweep.report.figures)."""

from attnsweep.report import logged
from attnsweep.report.figures import write_figures

sm = snakemake  # noqa: F821 -- injected by Snakemake's script directive

with logged(sm.log[0]):
    write_figures(sm.input.summary, dict(sm.output.items()))
