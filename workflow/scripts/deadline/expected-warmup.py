"""A warm-up job's expected seconds from the records there are now (attnsweep.sweep.expected_warmup_s), printed:
    python workflow/scripts/deadline/expected-warmup.py RESULTS CELL
RESULTS: the run's results folder; CELL: the cell's folder below RESULTS/cells (model~small/seq_len~1024/...). For a
first repeat's warm-up only: a later repeat's estimate is its repeat 1's record's, known when the sweep began.
start-before-deadline.sh runs it (a command, not a Snakemake script: the check runs it only where the estimate
Snakemake made would hold the job back). Not beside the report's scripts in workflow/scripts/, whose Python files are
the report stamp's code (attnsweep.codestamp).
"""

import sys

from attnsweep import sweep

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results, cell = sys.argv[1:]
    print(sweep.expected_warmup_s(results, sweep.cell_axes(cell), None))
