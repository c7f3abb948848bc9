"""Snakemake job: summary.csv -> the report's headline (attnsweep.report.headline)."""

from attnsweep.report import logged
from attnsweep.report.headline import write_headline

sm = snakemake  # noqa: F821 -- injected by Snakemake's script directive

with logged(sm.log[0]):
    write_headline(sm.input.summary, sm.output[0], sm.params.results)
