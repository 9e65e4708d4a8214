"""Which band of a raster feeds which input band of an encoder, from the band descriptions.

Sentinel-2 reads B2-B8, B8A, B11, B12 and Sentinel-1 VV, VH by default (Sec. 3.1). Descriptions come in
many spellings (``B02``, ``B2``, ``b8a``, ``B8A - NIR narrow``, ``Band 11``, ``vv``, ``Sigma0_VV_db``);
:func:`map_bands` matches them and says which inputs it could not find, so that the dock can ask. An
encoder with a band mask takes a raster that lacks some bands (:func:`default_band_mapping` with
``allow_missing``); Landsat's bands are translated to Sentinel-2's first (:mod:`.sensors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import UserError

_S2 = re.compile(r"(?<![A-Za-z0-9])B(?:AND)?[\s_]*0*(\d{1,2}A?)(?![0-9])", re.IGNORECASE)
_S1 = re.compile(r"(?<![A-Za-z])(VV|VH|HH|HV)(?![A-Za-z])", re.IGNORECASE)


def canonical_band(description: str) -> str | None:
    """A description's band name in the form the configurations use (``B2``, ``B8A``, ``VV``), or None."""
    text = description.strip()
    match = _S1.search(text)
    if match:
        return match.group(1).upper()
    match = _S2.search(text)
    if match:
        return "B" + match.group(1).upper()
    named = {"red": "R", "green": "G", "blue": "B"}
    return named.get(text.lower())


def map_bands(descriptions: Sequence[str | None], wanted: Sequence[str]) -> tuple[list[int | None], list[str]]:
    """For each wanted band, the 1-based index of the raster band whose description names it (None when
    absent), and the list of wanted bands not found. A band named twice takes its first occurrence."""
    found: dict[str, int] = {}
    for index, description in enumerate(descriptions, start=1):
        name = canonical_band(description or "")
        if name is not None and name not in found:
            found[name] = index
    indices = [found.get(band) for band in wanted]
    missing = [band for band, index in zip(wanted, indices) if index is None]
    return indices, missing


#: A Sentinel-2 raster of four bands without descriptions is the usual stack of the four 10 m bands.
TEN_METRE_S2 = ("B2", "B3", "B4", "B8")


def default_band_mapping(descriptions: Sequence[str | None], wanted: Sequence[str], modality: str,
                         allow_missing: bool = False) -> list[int | None]:
    """The mapping, or the raster's bands in order when no description names a band and the count fits;
    a clear error otherwise (the dock then lets the user choose).

    ``allow_missing`` (an encoder with a band mask): bands the raster lacks are None in the mapping instead of
    an error, as long as one band is found; a raster of four bands without descriptions is then read as the
    four 10 m bands of Sentinel-2 (:data:`TEN_METRE_S2`)."""
    indices, missing = map_bands(descriptions, wanted)
    if not missing:
        return [int(i) for i in indices if i is not None]
    undescribed = all(canonical_band(d or "") is None for d in descriptions)
    if undescribed and len(descriptions) == len(wanted):
        return list(range(1, len(wanted) + 1))
    if allow_missing and undescribed and len(descriptions) == len(TEN_METRE_S2) and set(TEN_METRE_S2) <= set(wanted):
        return map_bands(list(TEN_METRE_S2), wanted)[0]
    if allow_missing and len(missing) < len(wanted):
        return indices
    raise UserError(f"The {modality} raster lacks the bands {', '.join(missing)} (its bands: "
                    f"{', '.join(d or '?' for d in descriptions)}); choose them in the band table")
