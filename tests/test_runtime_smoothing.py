"""Semantic label persistence: less frame-to-frame flicker on a synthetic clip, real changes still shown."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest

from idd_edge_runtime.smoothing import LabelPersistence, flicker

ROAD, PERSON, SKY = 0, 1, 3


def noisy_clip(frames: int = 40, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(truth, prediction) class maps at 96x128: sky over road, a person block walking 2 px per frame.

    The 'model' gets the truth wrong the way segmenters flicker: 3 % of pixels take a random class each
    frame, and the sky/road boundary wobbles by up to 3 rows.
    """
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    rows = np.arange(96)[:, None]
    for f in range(frames):
        truth = np.where(rows < 40, SKY, ROAD).astype(np.uint8) * np.ones((1, 128), np.uint8)
        truth[50:90, 10 + 2 * f : 30 + 2 * f] = PERSON
        predicted = np.where(rows < 40 + rng.integers(-3, 4), SKY, ROAD).astype(np.uint8) * np.ones((1, 128), np.uint8)
        predicted[50:90, 10 + 2 * f : 30 + 2 * f] = PERSON
        noise = rng.random(truth.shape) < 0.03
        predicted[noise] = rng.integers(0, 4, int(noise.sum()))
        truths.append(truth)
        predictions.append(predicted)
    return truths, predictions


def mean_flicker(maps: List[np.ndarray]) -> float:
    return float(np.mean([flicker(a, b) for a, b in zip(maps, maps[1:])]))


def test_persistence_cuts_flicker_and_keeps_accuracy() -> None:
    truths, predictions = noisy_clip()
    smoother = LabelPersistence(3)
    smoothed = [smoother(p) for p in predictions]
    raw, filtered, truth = mean_flicker(predictions), mean_flicker(smoothed), mean_flicker(truths)
    # The walking person alone changes ~1.3 % of pixels a frame; the noise adds ~7 %, which the filter removes.
    assert raw > 0.06 and filtered < 0.3 * raw and filtered >= truth * 0.9
    accuracy_raw = np.mean([(p == t).mean() for p, t in zip(predictions[5:], truths[5:])])
    accuracy_smoothed = np.mean([(s == t).mean() for s, t in zip(smoothed[5:], truths[5:])])
    assert accuracy_smoothed > accuracy_raw  # the walker's lag costs less than the noise did


def test_a_real_change_shows_after_persistence_frames() -> None:
    smoother = LabelPersistence(3)
    road, person = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    shown = [smoother(m)[0, 0] for m in (road, person, person, road, person, person, person, person)]
    assert shown == [0, 0, 0, 0, 0, 0, 1, 1]  # a disagreement streak broken by agreement starts over
    assert smoother(np.zeros((2, 2), np.uint8)).shape == (2, 2)  # a new map size starts afresh


def test_persistence_one_passes_maps_through_and_bad_values_are_refused() -> None:
    smoother = LabelPersistence(1)
    a, b = np.zeros((3, 3), np.uint8), np.full((3, 3), 2, np.uint8)
    assert np.array_equal(smoother(a), a) and np.array_equal(smoother(b), b)
    with pytest.raises(ValueError, match="1..255"):
        LabelPersistence(0)
