"""The regions of the geo-context prototype set: a regular latitude/longitude grid.

The paper divides the globe into N_R = 4096 regions (Sec. 4.1) without saying how; Terrafuse uses a
regular grid of ``rows x cols`` cells in WGS 84 degrees, numbered row-major from the north-west corner:

    cell_lat = 180 / rows                 cell_lon = 360 / cols
    row = floor((90 - lat) / cell_lat)    clamped to [0, rows - 1]   (row 0 touches the North Pole)
    col = floor((lon + 180) / cell_lon)   modulo cols                (col 0 starts at 180 deg W)
    region = row * cols + col

With the paper's 4096 regions as 64 x 64 cells a cell is 2.8125 deg of latitude by 5.625 deg of longitude
(about 313 km x 626 km at the equator). A point on a cell's southern or eastern edge belongs to the next
cell; the South Pole belongs to the last row; longitudes wrap (190 deg E is 170 deg W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import UserError


@dataclass(frozen=True)
class RegionGrid:
    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"a region grid needs positive rows and cols, got {self.rows} x {self.cols}")

    @property
    def num_regions(self) -> int:
        return self.rows * self.cols

    @property
    def cell_deg(self) -> tuple[float, float]:
        """(latitude, longitude) size of a cell in degrees."""
        return 180.0 / self.rows, 360.0 / self.cols

    def index(self, lonlat: Tensor) -> Tensor:
        """Region index (long, shape ``lonlat.shape[:-1]``) of longitude/latitude pairs in degrees."""
        lonlat = torch.as_tensor(lonlat, dtype=torch.float64)
        if lonlat.shape[-1] != 2:
            raise ValueError(f"lonlat must end with (longitude, latitude), got shape {tuple(lonlat.shape)}")
        lon, lat = lonlat[..., 0], lonlat[..., 1]
        if not bool(torch.isfinite(lonlat).all()):
            raise UserError("The area's location is not a finite longitude/latitude")
        if bool((lat.abs() > 90).any()):
            raise UserError(f"Latitude out of range [-90, 90]: {lat.flatten().tolist()[:4]} (are x and y swapped?)")
        cell_lat, cell_lon = self.cell_deg
        row = torch.floor((90.0 - lat) / cell_lat).long().clamp(0, self.rows - 1)
        col = torch.remainder(torch.floor((lon + 180.0) / cell_lon).long(), self.cols)
        return row * self.cols + col

    def bounds(self, region: int) -> tuple[float, float, float, float]:
        """(west, south, east, north) of a region in degrees."""
        if not 0 <= region < self.num_regions:
            raise ValueError(f"region {region} outside 0..{self.num_regions - 1}")
        row, col = divmod(int(region), self.cols)
        cell_lat, cell_lon = self.cell_deg
        west = -180.0 + col * cell_lon
        north = 90.0 - row * cell_lat
        return west, north - cell_lat, west + cell_lon, north

    def centre(self, region: int) -> tuple[float, float]:
        west, south, east, north = self.bounds(region)
        return (west + east) / 2, (south + north) / 2

    def cell_size_km(self, latitude_deg: float = 0.0) -> tuple[float, float]:
        """Approximate (north-south, east-west) size of a cell in km at a latitude (sphere of 6371 km)."""
        cell_lat, cell_lon = self.cell_deg
        km_per_deg = math.pi * 6371.0 / 180.0
        return cell_lat * km_per_deg, cell_lon * km_per_deg * math.cos(math.radians(latitude_deg))
