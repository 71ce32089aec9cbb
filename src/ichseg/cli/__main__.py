"""``python -m ichseg.cli``: the same as the ``ichseg`` command."""

import sys

from ichseg.cli import main

sys.exit(main())
