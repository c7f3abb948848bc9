"""Snakemake job: summary.csv -> markdown tables (attnsweep.report.tables)."""

from attnsweep.report import logged
from attnsweep.report.tables import write_tables

sm = snakemake  # noqa: F821 -- injected by Snakemake's script directive

with logged(sm.log[0]):
    write_tables(sm.input.summary, dict(sm.output.items()))
