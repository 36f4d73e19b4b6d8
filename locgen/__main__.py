"""`python -m locgen ...` (what torchrun runs in each training process): the `locgen` command."""

import sys

from locgen.cli import main

sys.exit(main())
