"""``python -m medcl`` is the ``medcl`` command."""

import sys

from medcl.cli import main

sys.exit(main())
