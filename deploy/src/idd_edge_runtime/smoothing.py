"""Semantic temporal smoothing: a label-persistence filter against frame-to-frame flicker.

A pixel's shown class changes only once the model has disagreed with it for `persistence` frames in a
row; until then the previous class stays. Unlike an exponential average of class scores this works on
the class-id map itself, so it costs a few uint8 passes over the map (no per-class float planes), and it
serves models with an on-graph argmax, which give the host no scores. The price is a lag of
`persistence - 1` frames before a real change shows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


class LabelPersistence:
    """Stateful filter for one stream of (H, W) uint8 class maps; `persistence` 1 passes maps through."""

    def __init__(self, persistence: int):
        if not 1 <= persistence <= 255:
            raise ValueError(f"smoothing persistence must be 1..255 frames, got {persistence}")
        self.persistence = persistence
        self._shown: Optional[np.ndarray] = None
        self._disagreements: Optional[np.ndarray] = None

    def reset(self) -> None:
        self._shown = self._disagreements = None

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """The smoothed map (a new array; `labels` is left as it is)."""
        if self._shown is None or self._shown.shape != labels.shape or self.persistence == 1:
            self._shown = labels.copy()
            self._disagreements = np.zeros(labels.shape, dtype=np.uint8)
            return self._shown.copy()
        disagreements = self._disagreements
        assert disagreements is not None
        differ = labels != self._shown
        # Count the frames in a row each pixel disagreed (uint8 passes; agreement resets the count to 0).
        np.add(disagreements, 1, out=disagreements)
        np.multiply(disagreements, differ, out=disagreements)
        switch = disagreements >= self.persistence
        np.copyto(self._shown, labels, where=switch)
        np.multiply(disagreements, ~switch, out=disagreements)
        return self._shown.copy()


def flicker(previous: np.ndarray, current: np.ndarray) -> float:
    """Share of pixels whose class differs between two consecutive class maps."""
    return float(np.count_nonzero(previous != current)) / previous.size
