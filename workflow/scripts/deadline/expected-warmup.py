"""A warm-up job's expected seconds at its start, to the end of its timed job, from the records there are now and
the GPU's queue of timed jobs now (attnsweep.sweep.expected_warmup_start_s), printed:
    python workflow/scripts/deadline/expected-warmup.py RESULTS CELL STEPS [FIRST]
RESULTS: the run's results folder; CELL: the cell's folder below RESULTS/cells (model~small/seq_len~1024/...);
STEPS: the run's steps a cell; FIRST: repeat 1's record, for a later repeat's warm-up. start-before-deadline.sh runs
it before each warm-up (a command, not a Snakemake script: Snakemake made the job's estimate when it built the DAG,
and the records and the queue have changed since). Not beside the report's scripts in workflow/scripts/, whose
Python files are the report stamp's code (attnsweep.codestamp).
"""

import sys

from attnsweep import sweep

if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or not sys.argv[3].isdigit():
        sys.exit(__doc__)
    results, cell, steps, *first = sys.argv[1:]
    print(sweep.expected_warmup_start_s(results, sweep.cell_axes(cell), first[0] if first else None, int(steps)))
