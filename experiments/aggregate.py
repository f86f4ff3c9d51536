"""Tables and a plot of a sweep, from a checkout: the same as ``diffora aggregate`` (nas/cli.py).

    python experiments/aggregate.py logs/multiruns/2025-01-01_12-00-00
    python experiments/aggregate.py logs/multiruns --out reports/ablation
    python experiments/aggregate.py logs/multiruns/ablation --reference diffora --reference-label "space.rank=8"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, installed or not

from nas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["aggregate", *sys.argv[1:]]))
