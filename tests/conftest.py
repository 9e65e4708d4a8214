"""Shared test set-up: the plugin folder is importable under a name of the test's choosing.

QGIS installs a plugin folder under any name and the plugin's imports are relative, so the tests
import it through a symbolic link with another name than the checkout's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "terrafuse_under_test"
_LINK_DIR = Path(tempfile.mkdtemp(prefix="terrafuse-pkg-"))
os.symlink(ROOT, _LINK_DIR / PACKAGE_NAME)
sys.path.insert(0, str(_LINK_DIR))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_SCENE = ROOT / "resources" / "sample" / "sentinel2_coast.tif"
BACKEND_PYTHON = os.environ.get("TERRAFUSE_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
