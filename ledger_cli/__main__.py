"""`python -m ledger_cli`: the same as the `ledger` console script."""

import sys

from . import main

sys.exit(main())
