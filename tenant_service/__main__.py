"""`python -m tenant_service`: serve TenantService."""

from __future__ import annotations

import sys

from servicekit.server import main
from tenant_service.app import SPEC

if __name__ == "__main__":
    sys.exit(main(SPEC))
