"""`python -m dpgdiff ...`: see dpgdiff/cli.py."""

from dpgdiff.cli import exit_process, main

exit_process(main())
