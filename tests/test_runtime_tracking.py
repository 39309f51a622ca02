"""The runtime's NumPy ByteTrack against Ultralytics' BYTETracker on a synthetic clip with known trajectories."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List, Tuple

import numpy as np
import pytest

from idd_edge_runtime.tracking import ByteTracker, TrackerConfig, box_iou, greedy_match, track_color

FRAMES = 60


def synthetic_clip(seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame: (xyxy boxes, scores, class ids, ground-truth object ids; -1 = a false positive).

    Six objects move along straight lines with jittered boxes: one is hidden for 8 frames (occlusion),
    one drops to low scores for 6 frames (partly hidden: second-stage association), one enters at frame
    20 and one leaves at frame 40; single-frame false positives appear now and then. Detection order is
    shuffled every frame, as a detector's would be.
    """
    rng = np.random.default_rng(seed)
    starts = np.array([[40, 60], [300, 80], [120, 300], [500, 400], [620, 150], [200, 500]], dtype=float)
    velocities = np.array([[6, 1], [-4, 3], [3, -2], [-5, -1], [-2, 5], [4, 0]], dtype=float)
    sizes = np.array([[40, 90], [80, 60], [60, 120], [90, 70], [50, 50], [70, 100]], dtype=float)
    frames = []
    for f in range(FRAMES):
        boxes, scores, classes, truth = [], [], [], []
        for k in range(len(starts)):
            if (k == 0 and 25 <= f < 33) or (k == 4 and f < 20) or (k == 5 and f >= 40):
                continue
            cx, cy = starts[k] + velocities[k] * f + rng.normal(0, 1.0, 2)
            w, h = sizes[k] * (1 + rng.normal(0, 0.02, 2))
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores.append(rng.uniform(0.15, 0.24) if (k == 2 and 30 <= f < 36) else rng.uniform(0.6, 0.95))
            classes.append(k % 3)
            truth.append(k)
        if f % 7 == 3:  # a one-frame false positive far from everything
            x, y = rng.uniform(700, 900, 2)
            boxes.append([x, y, x + 30, y + 30])
            scores.append(0.5)
            classes.append(1)
            truth.append(-1)
        order = rng.permutation(len(boxes))
        frames.append(tuple(np.asarray(a)[order] for a in (boxes, scores, classes, truth)))
    return frames


def _ultralytics_ids(frames) -> List[np.ndarray]:
    from ultralytics.trackers.byte_tracker import BYTETracker

    class Detections:
        """What BYTETracker reads of Ultralytics' Boxes: conf, cls, xywh, boolean indexing."""

        def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray):
            self.xyxy, self.conf, self.cls = xyxy, conf, cls
            self.xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)

        def __len__(self) -> int:
            return len(self.conf)

        def __getitem__(self, index) -> "Detections":
            return Detections(self.xyxy[index], self.conf[index], self.cls[index])

    cfg = TrackerConfig()
    args = SimpleNamespace(
        track_high_thresh=cfg.high, track_low_thresh=cfg.low, new_track_thresh=cfg.new_track,
        track_buffer=cfg.buffer, match_thresh=cfg.match, fuse_score=cfg.fuse_score,
    )  # fmt: skip
    tracker = BYTETracker(args, frame_rate=30) if "frame_rate" in BYTETracker.__init__.__code__.co_varnames else BYTETracker(args)
    out = []
    for boxes, scores, classes, _ in frames:
        rows = tracker.update(Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.float32)))
        ids = np.full(len(scores), -1, dtype=np.int64)
        for row in rows.reshape(-1, 8):
            ids[int(row[7])] = int(row[4])
        out.append(ids)
    return out


def _ours(frames) -> List[np.ndarray]:
    tracker = ByteTracker()
    return [tracker.update(boxes, scores, classes) for boxes, scores, classes, _ in frames]


def test_same_ids_as_ultralytics_bytetracker() -> None:
    frames = synthetic_clip()
    theirs, ours = _ultralytics_ids(frames), _ours(frames)
    for f, (a, b) in enumerate(zip(theirs, ours)):
        assert a.tolist() == b.tolist(), f"frame {f}: Ultralytics {a.tolist()} vs ours {b.tolist()}"
    assert sum(int((ids >= 0).sum()) for ids in ours) > 250  # most detections of the clip carry an id


def test_ids_are_stable_through_occlusion_low_scores_entry_and_exit() -> None:
    frames = synthetic_clip(seed=1)
    ids_per_object: Dict[int, set] = {}
    for (_, _, _, truth), ids in zip(frames, _ours(frames)):
        for obj, track_id in zip(truth.tolist(), ids.tolist()):
            if obj >= 0 and track_id >= 0:
                ids_per_object.setdefault(obj, set()).add(track_id)
            if obj < 0:
                assert track_id == -1  # a one-frame false positive never becomes a confirmed track
    assert sorted(ids_per_object) == list(range(6))
    assert all(len(ids) == 1 for ids in ids_per_object.values()), ids_per_object  # one id per object, the clip through
    assert len({next(iter(ids)) for ids in ids_per_object.values()}) == 6  # and no id shared by two objects
    # Object 0 was hidden for 8 frames and object 2 fell below the high threshold for 6: both kept their ids.
    hidden_back = [ids[truth == 0] for (_, _, _, truth), ids in zip(frames[33:36], _ours(frames)[33:36])]
    assert all(len(x) == 1 and x[0] >= 0 for x in hidden_back)


def test_lost_tracks_are_forgotten_after_the_buffer() -> None:
    tracker = ByteTracker(TrackerConfig(buffer=3))
    box = np.array([[10.0, 10.0, 50.0, 90.0]])
    first = [tracker.update(box, np.array([0.9]), np.array([0]))[0] for _ in range(3)]
    assert first == [1, 1, 1]
    for _ in range(6):
        tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    again = [tracker.update(box, np.array([0.9]), np.array([0]))[0] for _ in range(2)]
    assert again == [-1, 2]  # a new track: unconfirmed on its first frame, a new id after that
    tracker.reset()  # forgets the tracks (a track on the first frame after it counts at once, as on frame 1) ...
    assert [tracker.update(box, np.array([0.9]), np.array([0]))[0] for _ in range(2)] == [3, 3]  # ... not the ids


def test_greedy_match_and_iou() -> None:
    cost = np.array([[0.1, 0.5], [0.2, 0.9], [0.95, 0.95]])
    pairs, rows, cols = greedy_match(cost, 0.8)
    assert pairs == [(0, 0)]
    assert rows == [1, 2] and cols == [1]
    pairs, _, _ = greedy_match(np.array([[0.3, 0.1], [0.2, 0.7]]), 0.8)
    assert sorted(pairs) == [(0, 1), (1, 0)]
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == [[pytest.approx(1 / 3), 0.0]]


def test_track_colours_are_fixed_and_distinct() -> None:
    colours = [track_color(i) for i in range(1, 13)]
    assert colours == [track_color(i) for i in range(1, 13)]
    assert len(set(colours)) == 12
    assert all(max(c) >= 200 for c in colours)  # bright enough to see on a road scene
