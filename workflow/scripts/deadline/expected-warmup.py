"""A warm-up job's expected seconds from the records there are now (attnsweep.sweep.expected_warmup_s), printed:
    python workflow/scripts/deadline/expected-warmup.py RESULTS CELL [FIRST]
RESULTS: the run's results folder; CELL: the cell's folder below RESULTS/cells (model~small/seq_len~1024/...);
FIRST: repeat 1's record, for a later repeat's warm-up (the workflow asks for first repeats' only).
start-before-deadline.sh runs it (a command, not a Snakemake script: the check runs it only where the estimate
Snakemake made would hold the job back). Not beside the report's scripts in workflow/scripts/, whose Python files are
the report stamp's code (attnsweep.codestamp).
"""

import sys

from attnsweep import sweep

if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    results, cell, *first = sys.argv[1:]
    print(sweep.expected_warmup_s(results, sweep.cell_axes(cell), first[0] if first else None))
