"""`python -m provisioner`: serve ProvisionerService."""

from __future__ import annotations

import sys

from provisioner.app import SPEC, choose_backend
from servicekit.errors import SettingsError
from servicekit.server import main
from servicekit.settings import load_settings


def run() -> int:
    """Checks the Provisioner's own settings (one line, exit 2), then serves."""
    try:
        choose_backend(load_settings(SPEC.name, extra=SPEC.extra_settings).extra)
    except SettingsError as exc:
        print(f"{SPEC.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return main(SPEC)


if __name__ == "__main__":
    sys.exit(run())
