"""Link this checkout into the default QGIS profile's plugin folder (for ``make qgis``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="terrafuse")
    args = parser.parse_args()
    profile = Path(os.environ.get("QGIS_CUSTOM_CONFIG_PATH") or Path.home() / ".local/share/QGIS/QGIS3")
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / args.name
    if link.is_symlink() or not link.exists():
        if link.is_symlink():
            link.unlink()
        link.symlink_to(ROOT, target_is_directory=True)
        print(f"{link} -> {ROOT}")
    else:
        print(f"{link} exists and is not a link; left alone")


if __name__ == "__main__":
    main()
