"""`python -m dpgdiff ...`: see dpgdiff/cli.py."""

import sys

from dpgdiff.cli import main

sys.exit(main())
