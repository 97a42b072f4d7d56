"""``python -m karabo_async``: the same as the ``karabo-async`` command."""

import sys

from .cli import main

sys.exit(main())
