"""`python -m mister_e.cli`: the `mister-e` command (as `accelerate launch -m mister_e.cli` needs)."""

import sys

from . import main

sys.exit(main())
