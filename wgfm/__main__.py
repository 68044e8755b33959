"""``python -m wgfm``: the ``wgfm`` command."""

import sys

from .cli import main

sys.exit(main())
