"""Build the plugin zip that plugins.qgis.org takes (under 20 MB) and the release assets it leaves out.

The zip holds what git tracks (``git ls-files``) under the plugin's folders: nothing ignored, compiled or
generated in the working tree gets in. The bundled backbone's weights (the catalogue's ``release_files``)
are left out and written beside the zip as release assets, named as the model manager asks for them
(``backend.hub.catalogue.release_url``): upload them to the release ``v<version>``. A plugin installed from
the zip downloads them once, verified against the sha256 the catalogue pins; a checkout has them already.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
import subprocess  # nosec B404 - git, without a shell
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.hub.catalogue import BUNDLED_MODELS_DIR, CATALOGUE  # noqa: E402 - needs ROOT on the path

PLUGIN_NAME = "terrafuse"
INCLUDE = ("__init__.py", "metadata.txt", "LICENSE", "README.md", "plugin", "backend", "ui", "resources",
           "requirements")
COMPILED_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd"}
#: plugins.qgis.org takes uploads up to 20 MB.
MAX_ZIP_BYTES = 20 * 10**6
#: Fixed timestamps: the same checkout gives the same zip.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def git_files(root: Path = ROOT) -> list[str]:
    """Tracked files, less those an ignore rule matches (a file added by force) and those gone from disk."""
    def run(*args: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)  # nosec B603 B607
        return [name for name in out.stdout.decode("utf-8").split("\0") if name]

    tracked = run("ls-files", "-z")
    ignored = set(run("ls-files", "-z", "--cached", "--ignored", "--exclude-standard"))
    return [name for name in tracked if name not in ignored and (root / name).is_file()]


def left_out() -> dict[str, str]:
    """The files the zip leaves out (relative path in the plugin -> release asset name)."""
    files = {}
    for entry in CATALOGUE.values():
        for relpath, _, _ in entry.release_files:
            path = (BUNDLED_MODELS_DIR / entry.source / relpath).relative_to(ROOT).as_posix()
            files[path] = f"{entry.source}--{relpath.replace('/', '--')}"
    return files


def plugin_files(root: Path = ROOT) -> list[str]:
    excluded = left_out()
    return [name for name in git_files(root)
            if name.split("/")[0] in INCLUDE and name not in excluded and "__pycache__" not in name.split("/")
            and Path(name).suffix not in COMPILED_SUFFIXES]


def version() -> str:
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "metadata.txt", encoding="utf-8")
    return metadata["general"]["version"]


def build(out_dir: Path, root: Path = ROOT) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_NAME}-{version()}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in plugin_files(root):
            info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{name}", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, (root / name).read_bytes())
    if target.stat().st_size >= MAX_ZIP_BYTES:
        raise SystemExit(f"{target} is {target.stat().st_size / 1e6:.1f} MB: plugins.qgis.org takes under "
                         f"{MAX_ZIP_BYTES / 1e6:.0f} MB")
    return target


def write_assets(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """The left-out files under their release asset names, to upload to the release of this version."""
    assets = []
    for path, asset in left_out().items():
        assets.append(Path(shutil.copyfile(root / path, out_dir / asset)))
    return assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    out = parser.parse_args().out
    target = build(out)
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
    for asset in write_assets(out):
        print(f"{asset} ({asset.stat().st_size / 1e6:.1f} MB): release asset of v{version()}")


if __name__ == "__main__":
    main()
