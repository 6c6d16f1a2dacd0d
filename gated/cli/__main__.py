"""``python -m gated.cli``: the same as the ``gated`` command."""

import sys

from gated.cli.main import main

sys.exit(main())
