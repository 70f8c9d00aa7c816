"""``python -m refconv.cli``: the ``refconv`` command without the console script (what torchrun runs)."""

import sys

from . import main

sys.exit(main())
