"""The ``series`` job: what the dock's date table shows before a SkySense job runs.

For every raster of a high-resolution image, a Sentinel-2 and a Sentinel-1 series it reads the date
(metadata tags, else the file name; :mod:`backend.raster.dates`) and the bands the chosen model's
encoder takes,
and says what would stop the job: no CRS, missing bands, no date, rasters that do not overlap. The same
functions check the inputs when the job itself runs (:func:`backend.raster.stack.modality_inputs`), so the
table and the job never disagree.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..models.skysense.loading import model_config
from ..progress import Progress
from ..raster.stack import MODALITY_NAMES, ModalityInputs, common_grid, default_grid_gsd_m, raster_inputs, split_list


def run_series(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """One row per raster (path, modality, date, date_source, bands, problem) and the problems of the
    whole: missing dates, and inputs without a common extent."""
    given = {m: split_list(params.get(m)) for m in ("hr", "s2", "s1")}
    config = model_config(params["model"])  # the bands asked for are the chosen model's
    total = sum(len(paths) for paths in given.values())
    rows: list[dict[str, Any]] = []
    checked: dict[str, list[Any]] = {}
    for name, paths in given.items():
        for path in paths:
            progress.update(len(rows), total, f"reading {path}")
            row: dict[str, Any] = {"path": path, "modality": name, "date": None, "date_source": "", "bands": None,
                                   "problem": None}
            try:
                if name not in config.encoders:
                    raise UserError(f"The model {config.name} has no encoder for {MODALITY_NAMES[name]}; it reads "
                                    f"{', '.join(MODALITY_NAMES[m] for m in config.modalities)}")
                raster = raster_inputs(name, path, config.encoders[name].bands, params.get(f"{name}_bands"),
                                       config.encoders[name].band_mask)
            except UserError as exc:
                row["problem"] = str(exc)
            else:
                row.update(date=raster.date.isoformat() if raster.date else None, date_source=raster.date_source,
                           bands=list(raster.bands))
                if raster.present:  # the encoder's band mask reads it without the bands it lacks
                    wanted = config.encoders[name].bands
                    row["missing_bands"] = [b for b, held in zip(wanted, raster.present) if not held]
                checked.setdefault(name, []).append(raster)
            rows.append(row)
    problems = []
    if not rows:
        problems.append("Give at least one input: a high-resolution image, a Sentinel-2 or a Sentinel-1 series")
    if len(given["hr"]) > 1:
        problems.append("Give one high-resolution image (a series is read for Sentinel-2 and Sentinel-1 only)")
    undated = [r["path"] for r in rows if r["modality"] != "hr" and r["problem"] is None and r["date"] is None]
    if undated:
        problems.append(f"{len(undated)} raster(s) of a series without a date: enter them (YYYY-MM-DD)")
    modalities = [ModalityInputs(n, tuple(r.path for r in rs), tuple(r.date for r in rs), rs[0].bands)
                  for n, rs in checked.items()]
    if modalities:
        try:
            common_grid(modalities, None, default_grid_gsd_m(params, modalities))
        except UserError as exc:
            problems.append(str(exc))
    progress.update(total, total, "done")
    return {"rows": rows, "problems": problems, "undated": undated,
            "modalities": {m: MODALITY_NAMES[m] for m in given if given[m]}}
