"""Entry point from a checkout: the same as ``diffora run`` (nas/cli.py), one run per composed config.

    python experiments/run.py task=mrpc discretizer.rho=0.25 seed=1
    python experiments/run.py -m task=rte,mrpc seed=0,1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, installed or not

from nas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
