"""`python -m config_service`: serve ConfigService."""

from __future__ import annotations

import sys

from config_service.app import SPEC
from servicekit.server import main

if __name__ == "__main__":
    sys.exit(main(SPEC))
