"""The teacher-logit cache's format and reader (written by the `teacher_logits` stage, read by KD training).

`logits.npy` (N, C, h, w) float16, one row per training image in sorted-stem order, read memory-mapped;
`index.json` (stems, image sizes, the teacher weights' SHA-256, geometry) says what the rows are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idd_edge import atomic
from idd_edge.errors import InputError
from idd_edge.jsonfile import read_json

if TYPE_CHECKING:
    import torch

    from idd_edge.seg.augment import Crop

LOGITS_NAME = "logits.npy"
INDEX_NAME = "index.json"
FORMAT_VERSION = 1


class TeacherLogits:
    """Read side of the cache: the teacher's logits of one crop of one training image.

    The array is memory-mapped on first use in each process (DataLoader workers open their own map), so
    the dataset pickles cheaply and the cache never has to fit in memory.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.index_path = self.cache_dir / INDEX_NAME
        self.index = read_json(self.index_path, missing="teacher logit cache not found; run `idd-edge teacher-logits`")
        for key in ("version", "stems", "image_sizes", "num_classes", "stored_size", "teacher_weights_sha256"):
            if key not in self.index:
                raise InputError(self.index_path, f"missing key {key!r}; re-run `idd-edge teacher-logits`")
        if self.index["version"] != FORMAT_VERSION:
            raise InputError(self.index_path, f"cache format {self.index['version']}, expected {FORMAT_VERSION}; "
                                              "re-run `idd-edge teacher-logits`")
        self.row = {stem: row for row, stem in enumerate(self.index["stems"])}
        self.num_classes = int(self.index["num_classes"])
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # a worker maps the file itself

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            path = self.cache_dir / LOGITS_NAME
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(path, f"cannot read the teacher logit cache ({exc}); re-run `idd-edge teacher-logits`") from None
            expected = (len(self.row), self.num_classes, *self.index["stored_size"])
            if array.shape != expected or array.dtype != np.float16:
                raise InputError(path, f"holds {array.shape} {array.dtype}, {self.index_path.name} says {expected} "
                                       "float16; re-run `idd-edge teacher-logits`")
            self._array = array
        return self._array

    def check_matches(self, teacher_weights_sha256: str | None, level: str, num_classes: int) -> None:
        """Refuse a cache made from other teacher weights or for another label level (a stale cache)."""
        if self.index["teacher_weights_sha256"] != teacher_weights_sha256:
            raise InputError(self.index_path, "made from other teacher weights than the current teacher's; "
                                              "re-run `idd-edge teacher-logits` (dvc repro does)")
        if self.index.get("label_level") != level or self.num_classes != num_classes:
            raise InputError(self.index_path, f"holds {self.num_classes} {self.index.get('label_level')} classes, "
                                              f"the run trains {num_classes} {level} classes; re-run `idd-edge teacher-logits`")

    def check_covers(self, stems: Sequence[str]) -> None:
        missing = [stem for stem in stems if stem not in self.row]
        if missing:
            raise InputError(self.index_path, f"no cached logits for {len(missing)} training image(s), e.g. "
                                              f"{missing[0]!r}; re-run `idd-edge teacher-logits`")

    def region(self, stem: str, crop: Crop, image_hw: tuple[int, int], size: tuple[int, int],
               paste: tuple[str, np.ndarray] | None = None) -> torch.Tensor:
        """(C, H, W) float16 logits of `crop` (a box in source-image pixels) resized to `size`, mirrored when
        the crop is: the box is mapped onto the cached grid and resampled like the image itself (bilinear,
        antialiased when shrinking: `resample_weights`), as two small matrix products.

        `paste` (ClassMix): (stem of the image pixels were pasted from, (H, W) bool map of where, at
        `image_hw`). Each cached cell then takes that image's logits in the share of its area the pasted
        pixels cover: the teacher's view of the pasted objects in their own scene, which is what the
        cache approximates anyway (the teacher never sees the mixed image)."""
        import torch

        cached_hw = tuple(self.index["image_sizes"][self.row[stem]])
        if tuple(image_hw) != cached_hw:
            raise InputError(self.index_path, f"{stem}: cached for a {cached_hw[1]}x{cached_hw[0]} image, the image "
                                              f"is {image_hw[1]}x{image_hw[0]}; re-run `idd-edge teacher-logits`")
        cached = self.array[self.row[stem]]
        if paste is not None:
            cached = self._pasted(cached, *paste)
        _classes, height, width = cached.shape
        scale_y, scale_x = height / image_hw[0], width / image_hw[1]
        rows = resample_weights(crop.top * scale_y, crop.height * scale_y, height, size[0])
        cols = resample_weights(crop.left * scale_x, crop.width * scale_x, width, size[1])
        # Only the cached pixels under the crop's filters are read and multiplied.
        (top, bottom), (left, right) = _support(rows), _support(cols)
        # (rows, cols, classes) order: the region is returned as a channels-last view, which is the layout
        # the KD loss reads without copying (`collate` keeps it for the batch).
        logits = torch.from_numpy(np.asarray(cached[:, top:bottom, left:right], dtype=np.float32)).permute(1, 2, 0)
        cols = cols[:, left:right].flip(0) if crop.flip else cols[:, left:right]
        region = cols @ (rows[:, top:bottom] @ logits.reshape(bottom - top, -1)).reshape(size[0], right - left, -1)
        return region.half().permute(2, 0, 1)

    def _pasted(self, cached: np.ndarray, source_stem: str, where: np.ndarray) -> np.ndarray:
        """(C, h, w) float32: `cached` with `source_stem`'s cached logits blended in by the share of each
        cached cell that `where` (pasted pixels, image resolution) covers (area average)."""
        import torch
        import torch.nn.functional as F

        if where.ndim != 2:
            raise ValueError(f"the pasted-pixel map must be (H, W), got shape {where.shape}")
        cover = F.interpolate(torch.from_numpy(where.astype(np.float32))[None, None], size=cached.shape[1:],
                              mode="area")[0, 0].numpy()
        source = np.asarray(self.array[self.row[source_stem]], dtype=np.float32)
        return np.asarray(cached, dtype=np.float32) * (1.0 - cover) + source * cover


def _support(weights: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the source pixels a (target, source) weight matrix reads."""
    used = weights.sum(0).nonzero()[:, 0]
    return int(used[0]), int(used[-1]) + 1


def resample_weights(start: float, length: float, source: int, target: int) -> torch.Tensor:
    """(target, source) weights that resample the span [start, start + length) of a `source`-pixel axis
    to `target` pixels: a triangle filter at each output pixel centre, widened by the shrink factor when
    shrinking (antialiasing), renormalised at the borders (edge pixels repeat). With the whole axis it is
    torch's `interpolate(mode="bilinear", align_corners=False, antialias=True)` along that axis."""
    import torch

    scale = length / target
    support = max(scale, 1.0)
    centres = start + (torch.arange(target, dtype=torch.float64) + 0.5) * scale - 0.5
    distance = (torch.arange(source, dtype=torch.float64)[None, :] - centres[:, None]).abs()
    weights = (1.0 - distance / support).clamp(min=0.0)
    empty = weights.sum(1) == 0  # a centre more than one pixel beyond the edge: the edge pixel
    weights[empty, distance[empty].argmin(1)] = 1.0
    return (weights / weights.sum(1, keepdim=True)).float()


def write_index(cache_dir: Path, *, stems: Sequence[str], image_sizes: Sequence[Sequence[int]], num_classes: int,
                stored_size: Sequence[int], label_level: str, teacher_weights_sha256: str | None, **details: Any) -> None:
    """Write the `index.json` that describes `logits.npy` (one row per stem, float16 (C, *stored_size));
    `details` (where the logits came from, geometry) are recorded as well."""
    atomic.write_json(Path(cache_dir) / INDEX_NAME, {
        "version": FORMAT_VERSION, "stems": list(stems), "image_sizes": [list(size) for size in image_sizes],
        "num_classes": int(num_classes), "stored_size": list(stored_size), "dtype": "float16",
        "label_level": label_level, "teacher_weights_sha256": teacher_weights_sha256, **details,
    })
