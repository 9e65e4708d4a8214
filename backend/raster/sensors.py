"""Multispectral sensors other than Sentinel-2 read by a Sentinel-2 encoder with a band mask, in one place.

A Sentinel-2 encoder whose configuration has ``band_mask`` (see :class:`.config.EncoderConfig`) takes a raster
that holds only some of its bands: the missing ones are zero after normalisation and a presence mask tells
the encoder which they are. This module says which Sentinel-2 band a band of another sensor stands for.

Landsat 8 and 9 OLI onto Sentinel-2 MSI, by the nearest band in wavelength, as the Harmonized Landsat
Sentinel-2 product pairs them (Claverie et al. 2018, "The Harmonized Landsat and Sentinel-2 surface
reflectance data set", Remote Sensing of Environment 219, Table 1; band centres from USGS, "What are the
band designations for the Landsat satellites?", and ESA's Sentinel-2 MSI User Guide):

====== ============================ ======================================
OLI    wavelength (um)              Sentinel-2 MSI (um)
====== ============================ ======================================
B2     blue 0.452-0.512             B2 0.458-0.523
B3     green 0.533-0.590            B3 0.543-0.578
B4     red 0.636-0.673              B4 0.650-0.680
B5     NIR 0.851-0.879              B8A (narrow NIR) 0.855-0.875
B6     SWIR 1 1.566-1.651           B11 1.565-1.655
B7     SWIR 2 2.107-2.294           B12 2.100-2.280
====== ============================ ======================================

OLI's B5 is the narrow NIR band, so it stands for B8A (as in HLS), not for the broad B8: a Landsat raster
lacks B5, B6, B7 (red edge) and B8 of Sentinel-2. OLI's B1 (coastal aerosol), B8 (panchromatic, 15 m), B9
(cirrus) and the thermal B10, B11 have no counterpart the encoder reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: Landsat 8/9 OLI band -> the Sentinel-2 band it stands for (see the table above).
LANDSAT_OLI_TO_S2: dict[str, str] = {"B2": "B2", "B3": "B3", "B4": "B4", "B5": "B8A", "B6": "B11", "B7": "B12"}
#: The order of a six-band Landsat surface-reflectance stack without band descriptions (B2..B7).
LANDSAT_OLI_ORDER = ("B2", "B3", "B4", "B5", "B6", "B7")
#: Band descriptions by colour or region, onto Sentinel-2 (``nir`` is the broad B8 of Sentinel-2; on a
#: Landsat raster its NIR is B8A, see :data:`LANDSAT_NAMED`).
NAMED_S2: dict[str, str] = {"blue": "B2", "green": "B3", "red": "B4", "nir": "B8", "swir1": "B11", "swir2": "B12"}
LANDSAT_NAMED: dict[str, str] = {**NAMED_S2, "nir": "B8A"}

#: Band subsets that real products carry, which band dropout draws as often as random subsets (what the
#: encoder most needs to read well): Landsat OLI, the four 10 m bands, the 10 m and 20 m bands without red
#: edge, and RGB.
COMMON_S2_SUBSETS: tuple[tuple[str, ...], ...] = (
    tuple(LANDSAT_OLI_TO_S2.values()),
    ("B2", "B3", "B4", "B8"),
    ("B2", "B3", "B4", "B8", "B11", "B12"),
    ("B2", "B3", "B4"),
)

_LANDSAT_NAME = re.compile(r"(?<![A-Za-z0-9])L[CO]0[89](?![0-9])|landsat", re.IGNORECASE)
_DESCRIPTION_WORD = re.compile(r"[a-z0-9]+")


def is_landsat(path: str, tags: Mapping[str, str], descriptions: Sequence[str | None]) -> bool:
    """Whether a raster is Landsat 8/9 OLI: its file name (``LC08_...``, ``LC09_...``, ``landsat``), a tag
    (``SPACECRAFT_ID=LANDSAT_8`` as in the MTL file, or any tag value naming Landsat) or a band description
    says so."""
    texts = [path.replace("\\", "/").rsplit("/", 1)[-1], *(str(v) for v in tags.values()),
             *(d or "" for d in descriptions)]
    return any(_LANDSAT_NAME.search(text) for text in texts)


def landsat_descriptions(descriptions: Sequence[str | None], count: int) -> list[str | None]:
    """The band descriptions of a Landsat raster in Sentinel-2 names (``B5`` -> ``B8A``, ``nir`` -> ``B8A``,
    ``SR_B6`` -> ``B11``); a raster of exactly six bands without descriptions is taken as B2..B7 in order.
    A band that stands for no Sentinel-2 band gets None."""
    from .band_mapping import canonical_band

    if count == len(LANDSAT_OLI_ORDER) and not any(d and d.strip() for d in descriptions):
        return [LANDSAT_OLI_TO_S2[b] for b in LANDSAT_OLI_ORDER]
    out: list[str | None] = []
    for description in descriptions:
        text = (description or "").strip()
        words = _DESCRIPTION_WORD.findall(text.lower())
        named = next((LANDSAT_NAMED[w] for w in words if w in LANDSAT_NAMED), None)
        band = canonical_band(re.sub(r"(?i)SR_", "", text)) if text else None
        if band is not None and band in LANDSAT_OLI_TO_S2:
            out.append(LANDSAT_OLI_TO_S2[band])
        elif named is not None:
            out.append(named)
        else:
            out.append(None)
    return out
