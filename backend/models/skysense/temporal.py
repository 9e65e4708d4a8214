"""Multi-modal temporal fusion (Sec. 3.2, eq. 1-2): the date-specific temporal positional encoding
P_DTPE, the extra token F_e and the fusion transformer ("naive Transformer encoder layers").

The layers are pre-norm encoder layers (LayerNorm, self-attention, residual; LayerNorm, GELU MLP,
residual), the structure of the official fusion checkpoint's mmseg layers, so that its weights map one to
one (see :mod:`.convert`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import UserError
from .config import DAYS_PER_YEAR


class DayOfYearEncoding(nn.Module):
    """P_DTPE in R^{365 x d} (eq. 2): a learnable vector per day of the year.

    ``forward(doy)`` takes days of the year 1..366 (1 = 1 January) and returns ``P_DTPE[doy - 1]``; day 366
    of a leap year (31 December) shares day 365's vector, as the paper's table has 365 rows.
    """

    def __init__(self, dim: int, days: int = DAYS_PER_YEAR) -> None:
        super().__init__()
        self.days = days
        self.weight = nn.Parameter(torch.zeros(days, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, doy: Tensor) -> Tensor:
        doy = torch.as_tensor(doy, device=self.weight.device)
        if doy.dtype.is_floating_point or doy.dtype == torch.bool:
            raise TypeError(f"days of the year must be integers, got {doy.dtype}")
        if bool((doy < 1).any()) or bool((doy > self.days + 1).any()):
            raise UserError(f"Day of year outside 1..{self.days + 1}: {doy.flatten().tolist()[:8]}")
        return self.weight[(doy.long() - 1).clamp(max=self.days - 1)]


class TemporalFusion(nn.Module):
    """``forward(tokens, padding)``: F_T^date (N_S, N_T, d) -> F_fus^mm (N_S, d).

    The extra token F_e is prepended (eq. 2, F_T^cat), the transformer runs over the 1 + N_T tokens of each
    pixel, and the extra token's output is the multi-modal spatiotemporal feature. ``padding`` (N_S, N_T),
    True where a time step is missing, keeps padded steps out of the attention.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.extra_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.extra_token, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        )

    def prepend_extra_token(self, tokens: Tensor) -> Tensor:
        """F_T^cat = Concat[F_e, F_T^date] (eq. 2)."""
        return torch.cat([self.extra_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward(self, tokens: Tensor, padding: Tensor | None = None) -> Tensor:
        x = self.prepend_extra_token(tokens)
        mask = None
        if padding is not None:
            mask = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=mask)
        return x[:, 0]
