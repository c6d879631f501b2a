"""`python -m provisioner`: serve ProvisionerService."""

from __future__ import annotations

import sys

from servicekit.server import main
from provisioner.app import SPEC

if __name__ == "__main__":
    sys.exit(main(SPEC))
