"""`python -m simulations.reports`: see simulations/reports/cli.py."""

import sys

from simulations.reports.cli import main

sys.exit(main())
