"""``python -m fastgen_export SRC OUT [--dtype fp16] [--opset N] [--overwrite] [--optimize] [--no-parity]``."""

import sys

from .cli import main

sys.exit(main())
