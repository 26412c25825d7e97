"""``python -m gna_cute`` runs the ``gna-cute`` command line."""

import sys

from .cli import main

sys.exit(main())
