"""`python -m namd.cli ...` (what `accelerate launch -m namd.cli` runs): the `namd` command."""

import sys

from namd.cli.main import main

sys.exit(main())
