"""``python3 -m tools.capture`` runs the capture tool (see capture.py)."""

import sys

from .capture import main

sys.exit(main())
