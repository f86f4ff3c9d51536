"""Tables and a plot of a sweep: runs.csv, summary.csv, summary.md, paired.csv and summary.png.

    python experiments/aggregate.py logs/multiruns/2025-01-01_12-00-00
    python experiments/aggregate.py logs/multiruns --out reports/ablation
    python experiments/aggregate.py logs/multiruns/ablation --reference diffora --reference-label "rank=8"

Every (method, variant) row is also compared seed by seed with the reference method's row of its task
(paired.csv and a "Paired differences vs <reference>" table per task in summary.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from nas.aggregate import DEFAULT_REFERENCE, AggregateWarning, aggregate
from nas.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffora", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra sweep folder (hydra.sweep.dir), or a folder holding several")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/aggregate)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="METHOD",
                        help=f"method the paired differences are taken against (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--reference-label", default=None, metavar="LABEL",
                        help="variant label of the reference row, needed only where the reference method has several "
                             "rows in a task (e.g. 'rank=8', as printed in summary.md's variant column)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = aggregate(args.sweep_dir, args.out, reference=args.reference,
                              reference_label=args.reference_label)
        except ConfigError as error:
            sys.exit(f"diffora: error: {error}")
    for w in caught:
        if issubclass(w.category, AggregateWarning):
            print(f"diffora: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(paths["summary_md"].read_text())
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
