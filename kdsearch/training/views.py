"""Consistent augmented views: K fixed views of every image, the teacher's logits cached per view.

Beyer et al. (2022, "Knowledge distillation: a good teacher is patient and consistent") show
that a student must see the very view the teacher's logits were computed on. Random
augmentation with cached logits breaks that (the logits describe other pixels); running the
teacher live in every step costs a teacher forward pass per batch and rules out teachers that
are files. Fixed views keep both: each image has K views, drawn once from a seeded generator
(a horizontal flip flag and a shift dy, dx per image and view; view 0 is the image itself), the
teacher runs once per view, and each epoch shows every image in one of its views together with
the logits of exactly that view.

Only the view parameters are stored (3 bytes per image and view); the pixels of a view are
made per batch by `render`, the same deterministic tensor op for the teacher and the student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VIEW_BATCH = 512  # images per teacher forward pass when computing the views' logits
SPLIT_STREAM = {"train": 0, "val": 1}  # a split's views come from their own seeded stream


@dataclass(frozen=True)
class ViewSettings:
    """What shapes a study's views, resolved once from `[student.train]` and the study's seed."""

    k: int  # views per image; 0: no fixed views
    hflip: bool
    translate: int  # the largest shift, in pixels
    seed: int

    def identity(self) -> dict:
        """The views' part of their cache key (and of their meta.json)."""
        return {"views": self.k, "hflip": self.hflip, "translate": self.translate,
                "seed": self.seed}


@dataclass(frozen=True)
class ViewTable:
    """The views of N images: flip (N, K) bool, dy and dx (N, K) int8 shifts in [-pad, pad]."""

    flip: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    pad: int  # the largest shift: the zero border `render` pads with

    def to(self, device: torch.device) -> ViewTable:
        return ViewTable(self.flip.to(device), self.dy.to(device), self.dx.to(device), self.pad)

    @property
    def k(self) -> int:
        return self.flip.shape[1]

    def __len__(self) -> int:
        return self.flip.shape[0]


def make_views(n: int, k: int, hflip: bool, translate: int, seed: int) -> ViewTable:
    """K views of each of n images, from a generator seeded with `seed`; view 0 is the identity."""
    gen = torch.Generator().manual_seed(seed)
    flip = torch.rand((n, k), generator=gen) < 0.5 if hflip else torch.zeros((n, k), dtype=torch.bool)
    dy = torch.randint(-translate, translate + 1, (n, k), generator=gen, dtype=torch.int8)
    dx = torch.randint(-translate, translate + 1, (n, k), generator=gen, dtype=torch.int8)
    flip[:, 0], dy[:, 0], dx[:, 0] = False, 0, 0
    return ViewTable(flip, dy, dx, translate)


def views_seed(seed: int, split: str) -> int:
    return seed * 1_000_003 + SPLIT_STREAM[split]


def render(x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
           pad: int) -> torch.Tensor:
    """The views of a batch: x (B, C, H, W) flipped where `flip`, then shifted by (dy, dx).

    Pixel (i, j) of a view is pixel (i + dy, j + dx) of the (flipped) image, zero outside it.
    Works on any dtype (uint8 pixels here), on whatever device `x` is.
    """
    flip = flip.to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy.to(x.device, torch.long)[:, None] + pad + torch.arange(h, device=x.device))
    cols = (dx.to(x.device, torch.long)[:, None] + pad + torch.arange(w, device=x.device))
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def render_views(x: torch.Tensor, table: ViewTable, idx: torch.Tensor,
                 view: torch.Tensor) -> torch.Tensor:
    """Images `x` (those at positions `idx` of the table's split), each in view `view`."""
    idx, view = idx.to(table.flip.device), view.to(table.flip.device)
    return render(x, table.flip[idx, view], table.dy[idx, view], table.dx[idx, view], table.pad)


@dataclass(frozen=True)
class ViewSet:
    """A split's views and the teacher's logits on them: logits (K, N, classes) float32."""

    table: ViewTable
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.table)

    @staticmethod
    def cat(parts: list[ViewSet]) -> ViewSet:
        """Views of splits laid end to end (compress trains on train + validation)."""
        t = [p.table for p in parts]
        if len({(p.k, p.pad) for p in t}) != 1:
            raise ValueError("views of different K or shift cannot be joined")
        table = ViewTable(torch.cat([p.flip for p in t]), torch.cat([p.dy for p in t]),
                          torch.cat([p.dx for p in t]), t[0].pad)
        return ViewSet(table, torch.cat([p.logits for p in parts], dim=1))


@torch.inference_mode()
def view_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                table: ViewTable, batch_size: int = VIEW_BATCH,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The teacher's logits on every view of x (uint8 (N, C, H, W)): (K, N, classes) float32.

    `forward` maps a uint8 batch to logits (a kdsearch model, a loaded teacher file);
    `progress(n)` hears after each batch of n images (8 views of CIFAR-10 take minutes).
    """
    per_view = []
    for v in range(table.k):
        outs = []
        for i in range(0, len(x), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(x)))
            xb = render_views(x[i : i + batch_size], table, idx, torch.full_like(idx, v))
            outs.append(forward(xb).float().cpu())
            if progress is not None:
                progress(len(xb))
        per_view.append(torch.cat(outs))
    return torch.stack(per_view)
