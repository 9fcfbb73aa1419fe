"""Benchmarks: ratios measured side by side in one run (`make bench`).

Run from a checkout (`.venv/bin/python -m bench.<name>`), where the `refinery` package is
not installed but lives under services/: put that on the import path, as the Makefile,
`./refinery` and pytest do.
"""

import sys
from pathlib import Path

_SOURCE_ROOT = str(Path(__file__).resolve().parents[1] / "services")
if _SOURCE_ROOT not in sys.path:
    sys.path.insert(0, _SOURCE_ROOT)
