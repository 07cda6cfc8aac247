"""``python -m bench``: see ``bench.tool``."""

import sys

from .tool import main

sys.exit(main())
