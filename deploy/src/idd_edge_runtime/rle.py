"""COCO run-length encoding of instance masks (what `pycocotools.mask.encode` writes), in NumPy.

COCO RLE reads the mask column by column (Fortran order) and stores alternating run lengths, the first
one of background (0 when the mask starts with foreground). `counts` is then packed into COCO's
compressed ASCII form: each count as the difference to the count two before it (from the third on),
in 5-bit groups with a continuation bit, offset by 48. Clients decode it with
`pycocotools.mask.decode({"size": [h, w], "counts": s})`.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def run_lengths(flat: np.ndarray) -> List[int]:
    """Alternating run lengths of a 1-D bool array, starting with a (possibly empty) run of False."""
    flat = np.asarray(flat, dtype=bool).reshape(-1)
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return ([0] + runs) if flat[0] else runs


def compress_counts(counts: Sequence[int]) -> str:
    """COCO's compressed string of run lengths (maskApi.c rleToString)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(out)


def decompress_counts(text: str) -> List[int]:
    """Run lengths back from COCO's compressed string (maskApi.c rleFrString)."""
    counts: List[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            c = ord(text[position]) - 48
            x |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position += 1
            shift += 1
            if not more and c & 0x10:
                x |= -1 << (5 * shift)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> Dict[str, object]:
    """COCO RLE {"size": [h, w], "counts": str} of a full-frame (h, w) bool mask."""
    mask = np.asarray(mask, dtype=bool)
    return {"size": list(mask.shape), "counts": compress_counts(run_lengths(mask.ravel(order="F")))}


def encode_region(mask: np.ndarray, region: Sequence[int], frame_shape: Sequence[int]) -> Dict[str, object]:
    """COCO RLE of a mask given as its box crop (`region` = x0, y0, x1, y1, end exclusive) in a frame.

    Only the crop's column strip is scanned (the runtime keeps masks as crops); the columns left and right
    of it are background runs added to the first and last count.
    """
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x0, y0, x1, y1 = (int(v) for v in region)
    strip = np.zeros((height, max(x1 - x0, 0)), dtype=bool)
    strip[y0:y1, :] = mask
    counts = run_lengths(strip.ravel(order="F"))
    counts[0] += x0 * height
    trailing = (width - x1) * height
    if len(counts) % 2:  # the strip ends with background: extend that run
        counts[-1] += trailing
    elif trailing:
        counts.append(trailing)
    return {"size": [height, width], "counts": compress_counts(counts)}


def decode(rle: Dict[str, object]) -> np.ndarray:
    """(h, w) bool mask of a COCO RLE with compressed (str) or plain (list) counts."""
    height, width = (int(v) for v in rle["size"])  # type: ignore[union-attr]
    counts = rle["counts"]
    runs = decompress_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]  # type: ignore[union-attr]
    if sum(runs) != height * width:
        raise ValueError(f"RLE counts sum to {sum(runs)}, not {height}x{width} = {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((width, height)).T
