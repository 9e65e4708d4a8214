"""Which band of a raster feeds which input band of an encoder, from the band descriptions.

Sentinel-2 reads B2-B8, B8A, B11, B12 and Sentinel-1 VV, VH by default (Sec. 3.1). Descriptions come in
many spellings (``B02``, ``B2``, ``b8a``, ``B8A - NIR narrow``, ``Band 11``, ``vv``, ``Sigma0_VV_db``);
:func:`map_bands` matches them and says which inputs it could not find, so that the dock can ask.
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


def default_band_mapping(descriptions: Sequence[str | None], wanted: Sequence[str], modality: str) -> list[int]:
    """The mapping, or the raster's bands in order when no description names a band and the count fits;
    a clear error otherwise (the dock then lets the user choose)."""
    indices, missing = map_bands(descriptions, wanted)
    if not missing:
        return [int(i) for i in indices if i is not None]
    if all(canonical_band(d or "") is None for d in descriptions) and len(descriptions) == len(wanted):
        return list(range(1, len(wanted) + 1))
    raise UserError(f"The {modality} raster lacks the bands {', '.join(missing)} (its bands: "
                    f"{', '.join(d or '?' for d in descriptions)}); choose them in the band table")
