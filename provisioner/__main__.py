"""`python -m provisioner`: serve ProvisionerService."""

from __future__ import annotations

import sys

from provisioner.app import SPEC
from servicekit.server import main

if __name__ == "__main__":
    sys.exit(main(SPEC))
