"""Fail when the plugin's test environment shadows QGIS's own numpy or PyQt5 (a broken QGIS follows)."""

from __future__ import annotations

import sys
import sysconfig


def main() -> int:
    own = sysconfig.get_paths()["purelib"]
    problems = []
    import numpy
    import PyQt5.QtCore
    import qgis.core

    for module in (numpy, PyQt5.QtCore):
        if module.__file__.startswith(own):
            problems.append(f"{module.__name__} comes from {module.__file__}, not from the system's QGIS Python")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"QGIS Python ok: numpy {numpy.__version__}, Qt {PyQt5.QtCore.QT_VERSION_STR}, "
              f"QGIS {qgis.core.Qgis.QGIS_VERSION}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
