"""``python -m sslr``: the same command as ``sslr``."""

import sys

from sslr.cli import main

sys.exit(main())
