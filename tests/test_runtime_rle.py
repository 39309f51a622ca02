"""The runtime's COCO RLE encoder against pycocotools (the reference every COCO client decodes with)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from idd_edge_runtime import rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _coco(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def _masks(rng: np.random.Generator):
    yield np.zeros((5, 7), bool)
    yield np.ones((6, 4), bool)
    first = np.zeros((9, 3), bool)
    first[0, 0] = True  # the mask starts with foreground: counts begin with a 0-long background run
    yield first
    for _ in range(40):
        h, w = rng.integers(1, 60, 2)
        yield rng.random((h, w)) < rng.uniform(0.02, 0.98)
    blob = np.zeros((480, 640), bool)  # long runs: multi-group counts and negative differences
    blob[100:400, 50:600] = True
    blob[200:220, 300:310] = False
    yield blob


def test_encode_matches_pycocotools_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    for mask in _masks(rng):
        ours = rle.encode(mask)
        assert ours == _coco(mask), mask.shape
        assert np.array_equal(rle.decode(ours), mask)
        assert rle.decompress_counts(ours["counts"]) == rle.run_lengths(mask.ravel(order="F"))


@pytest.mark.parametrize("region", [(0, 0, 10, 8), (3, 2, 9, 7), (10, 0, 20, 12), (0, 5, 20, 12), (19, 11, 20, 12), (4, 4, 4, 9)])
def test_a_box_crop_encodes_as_its_full_frame_mask(region) -> None:
    rng = np.random.default_rng(sum(region))
    x0, y0, x1, y1 = region
    crop = rng.random((y1 - y0, x1 - x0)) < 0.5
    full = np.zeros((12, 20), bool)
    full[y0:y1, x0:x1] = crop
    assert rle.encode_region(crop, region, full.shape) == _coco(full)


def test_decode_reads_plain_counts_and_rejects_a_wrong_size() -> None:
    assert rle.decode({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="RLE counts sum to 5, not 2x3 = 6"):
        rle.decode({"size": [2, 3], "counts": [2, 3]})
