"""Snakemake job: cell JSONs -> summary.csv (attnsweep.report.aggregate)."""

from attnsweep.report import logged
from attnsweep.report.aggregate import write_summary

sm = snakemake  # noqa: F821 -- injected by Snakemake's script directive

with logged(sm.log[0]):
    write_summary(
        sm.input.cells, sm.output[0], allow_mixed_env=sm.params.allow_mixed_env, run=sm.params.run,
        missing=sm.params.missing, repeats=sm.input.repeats,
    )
