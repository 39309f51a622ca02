"""ByteTrack-style identities for YOLO instances across frames, in NumPy (no torch, no scipy, no lap on the Pi).

The algorithm is Ultralytics' `BYTETracker` (Zhang et al. 2022, "ByteTrack"), step for step, so the ids
match it on the same detections (tests/test_runtime_tracking.py runs both):
  1. detections split into high (score >= high) and low (low < score < high) confidence;
  2. confirmed and lost tracks, moved by a constant-velocity Kalman filter on (cx, cy, aspect, height),
     are matched to the high detections by IoU (fused with the detection score);
  3. tracks still unmatched are matched to the low detections by IoU alone (a person half hidden behind a
     rickshaw keeps its id although its score dropped); tracks matched to nothing become lost;
  4. tracks born last frame (unconfirmed) take leftover high detections or are dropped;
  5. leftover high detections start new tracks; lost tracks older than `buffer` frames are forgotten.
Matching is greedy by cost rather than Hungarian: road scenes rarely have two tracks competing for the
same box at a cost under the threshold, and greedy needs no solver on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

#: Kalman noise, relative to the box height (Ultralytics' / DeepSORT's values).
_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160
_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)

TRACKED, LOST, REMOVED = 0, 1, 2


@dataclass(frozen=True)
class TrackerConfig:
    """Ultralytics' `bytetrack.yaml` defaults, except the buffer, in frames at ~30 FPS as there."""

    high: float = 0.25  # first-stage association threshold
    low: float = 0.1  # second stage: detections between low and high
    new_track: float = 0.25  # a detection matched to nothing starts a track at this score
    match: float = 0.8  # highest (1 - IoU * score) cost of a first-stage match
    buffer: int = 30  # frames a lost track can still be found again
    fuse_score: bool = True


def _xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    width, height = box[2] - box[0], box[3] - box[1]
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, width / height, height], dtype=np.float64)


class _Track:
    """One tracklet: Kalman state (mean 8, covariance 8x8) in (cx, cy, a, h, and their velocities)."""

    def __init__(self, box: np.ndarray, score: float, class_id: int, index: int):
        self.box, self.score, self.class_id, self.index = box, score, class_id, index
        self.mean = np.zeros(8)
        self.covariance = np.eye(8)
        self.track_id = 0
        self.state = TRACKED
        self.activated = False
        self.frame = self.start_frame = 0

    def start(self, track_id: int, frame: int) -> None:
        measurement = _xyxy_to_xyah(self.box)
        self.mean = np.r_[measurement, np.zeros(4)]
        h = measurement[3]
        std = np.array([2 * _STD_POSITION * h, 2 * _STD_POSITION * h, 1e-2, 2 * _STD_POSITION * h,
                        10 * _STD_VELOCITY * h, 10 * _STD_VELOCITY * h, 1e-5, 10 * _STD_VELOCITY * h])  # fmt: skip
        self.covariance = np.diag(std**2)
        self.track_id, self.state = track_id, TRACKED
        self.activated = frame == 1  # a track born after the first frame must be seen twice to count
        self.frame = self.start_frame = frame

    def take(self, detection: "_Track", frame: int) -> None:
        """Matched to `detection`: (again) tracked and confirmed; the Kalman update follows in _correct."""
        self.state, self.activated, self.frame = TRACKED, True, frame
        self.score, self.class_id, self.index, self.box = detection.score, detection.class_id, detection.index, detection.box

    def xyxy(self) -> np.ndarray:
        cx, cy, aspect, h = self.mean[:4]
        w = aspect * h
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _predict(tracks: Sequence[_Track]) -> None:
    """One constant-velocity step for all tracks at once (a lost track's height stops changing)."""
    if not tracks:
        return
    means = np.stack([t.mean for t in tracks])
    covariances = np.stack([t.covariance for t in tracks])
    for i, track in enumerate(tracks):
        if track.state != TRACKED:
            means[i, 7] = 0
    h = means[:, 3:4]
    std = np.hstack([_STD_POSITION * h, _STD_POSITION * h, np.full_like(h, 1e-2), _STD_POSITION * h,
                     _STD_VELOCITY * h, _STD_VELOCITY * h, np.full_like(h, 1e-5), _STD_VELOCITY * h])  # fmt: skip
    means = means @ _MOTION.T
    covariances = _MOTION @ covariances @ _MOTION.T + std[:, :, None] ** 2 * np.eye(8)
    for track, mean, covariance in zip(tracks, means, covariances):
        track.mean, track.covariance = mean, covariance


def _correct(tracks: Sequence[_Track]) -> None:
    """Kalman update of all matched tracks at once with their new boxes (one batched 4x4 solve).

    Deferred to the end of the frame: the later association stages only look at tracks not matched yet,
    whose predicted state this does not touch.
    """
    if not tracks:
        return
    means = np.stack([t.mean for t in tracks])
    covariances = np.stack([t.covariance for t in tracks])
    measured = np.stack([_xyxy_to_xyah(t.box) for t in tracks])
    h = means[:, 3:4]
    std = np.hstack([_STD_POSITION * h, _STD_POSITION * h, np.full_like(h, 1e-1), _STD_POSITION * h])
    projected_cov = covariances[:, :4, :4] + std[:, :, None] ** 2 * np.eye(4)
    # gain = P H^T S^-1, from S gain^T = H P (P and S are symmetric)
    gain = np.linalg.solve(projected_cov, covariances[:, :4, :]).transpose(0, 2, 1)
    means = means + (gain @ (measured - means[:, :4])[:, :, None])[:, :, 0]
    covariances = covariances - gain @ projected_cov @ gain.transpose(0, 2, 1)
    for track, mean, covariance in zip(tracks, means, covariances):
        track.mean, track.covariance = mean, covariance


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _cost(tracks: Sequence[_Track], detections: Sequence[_Track], fuse_score: bool) -> np.ndarray:
    boxes_t = np.array([t.xyxy() for t in tracks]).reshape(-1, 4)
    boxes_d = np.array([d.box for d in detections]).reshape(-1, 4)
    similarity = box_iou(boxes_t, boxes_d)
    if fuse_score:
        similarity = similarity * np.array([d.score for d in detections])[None, :]
    return 1.0 - similarity


def greedy_match(cost: np.ndarray, threshold: float) -> Tuple[List[Tuple[int, int]], List[int], List[int]]:
    """Pairs (row, col) taken cheapest first while the cost is below `threshold`; unmatched rows and cols."""
    pairs: List[Tuple[int, int]] = []
    if cost.size:
        rows, cols = np.unravel_index(np.argsort(cost, axis=None, kind="stable"), cost.shape)
        used_rows, used_cols = set(), set()
        for r, c in zip(rows.tolist(), cols.tolist()):
            if cost[r, c] >= threshold:
                break
            if r not in used_rows and c not in used_cols:
                pairs.append((r, c))
                used_rows.add(r)
                used_cols.add(c)
    matched_rows, matched_cols = {r for r, _ in pairs}, {c for _, c in pairs}
    return (
        pairs,
        [r for r in range(cost.shape[0]) if r not in matched_rows],
        [c for c in range(cost.shape[1]) if c not in matched_cols],
    )


class ByteTracker:
    """Give each detection of a frame a persistent track id (or -1: not (yet) a confirmed track)."""

    def __init__(self, config: TrackerConfig = TrackerConfig()):
        self.config = config
        self.tracked: List[_Track] = []
        self.lost: List[_Track] = []
        self.frame = 0
        self._next_id = 1
        self._removed_ids: set = set()

    def reset(self) -> None:
        """Forget every track; ids go on counting, so a client never sees an old id on a new object."""
        self.tracked, self.lost, self.frame, self._removed_ids = [], [], 0, set()

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        """Track ids (int64, -1 for none) of the frame's detections, in their order."""
        cfg = self.config
        self.frame += 1
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high_index = np.flatnonzero(valid & (scores >= cfg.high))
        low_index = np.flatnonzero(valid & (scores > cfg.low) & (scores < cfg.high))
        high = [_Track(boxes[i], float(scores[i]), int(class_ids[i]), int(i)) for i in high_index]
        low = [_Track(boxes[i], float(scores[i]), int(class_ids[i]), int(i)) for i in low_index]

        unconfirmed = [t for t in self.tracked if not t.activated]
        pool = [t for t in self.tracked if t.activated] + [t for t in self.lost if t not in self.tracked]
        _predict(pool)
        updated: List[_Track] = []
        lost_now: List[_Track] = []
        removed_now: List[_Track] = []

        pairs, unmatched_tracks, unmatched_high = greedy_match(_cost(pool, high, cfg.fuse_score), cfg.match)
        for t, d in pairs:
            pool[t].take(high[d], self.frame)
            updated.append(pool[t])
        remaining = [pool[t] for t in unmatched_tracks if pool[t].state == TRACKED]
        pairs, still_unmatched, _ = greedy_match(_cost(remaining, low, False), 0.5)
        for t, d in pairs:
            remaining[t].take(low[d], self.frame)
            updated.append(remaining[t])
        for t in still_unmatched:
            remaining[t].state = LOST
            lost_now.append(remaining[t])

        leftover = [high[d] for d in unmatched_high]
        pairs, dropped, unmatched_new = greedy_match(_cost(unconfirmed, leftover, cfg.fuse_score), 0.7)
        for t, d in pairs:
            unconfirmed[t].take(leftover[d], self.frame)
            updated.append(unconfirmed[t])
        _correct(list(updated))  # the tracks matched in any stage (new tracks below start from their box)
        for t in dropped:
            unconfirmed[t].state = REMOVED
            removed_now.append(unconfirmed[t])
        for d in unmatched_new:
            detection = leftover[d]
            if detection.score >= cfg.new_track:
                detection.start(self._next_id, self.frame)
                self._next_id += 1
                updated.append(detection)
        for track in self.lost:
            if self.frame - track.frame > cfg.buffer:
                track.state = REMOVED
                removed_now.append(track)
        self._merge(updated, lost_now, removed_now)
        ids = np.full(len(scores), -1, dtype=np.int64)
        for track in self.tracked:
            if track.activated:
                ids[track.index] = track.track_id
        return ids

    def _merge(self, updated: List[_Track], lost_now: List[_Track], removed_now: List[_Track]) -> None:
        """End-of-frame bookkeeping as Ultralytics' merge_track_pools (found-again tracks leave `lost`)."""
        tracked = [t for t in self.tracked if t.state == TRACKED]
        for track in updated:
            if track not in tracked:
                tracked.append(track)
        lost = [t for t in self.lost if t not in tracked] + lost_now
        # As there, a track removed this frame leaves `lost` only at the next frame's bookkeeping.
        lost = [t for t in lost if t.track_id not in self._removed_ids]
        self._removed_ids.update(t.track_id for t in removed_now)
        self.tracked, self.lost = _drop_duplicates(tracked, lost)


def _drop_duplicates(tracked: List[_Track], lost: List[_Track]) -> Tuple[List[_Track], List[_Track]]:
    """A tracked and a lost track on the same box (IoU > 0.85): keep the one that was tracked longer."""
    if not tracked or not lost:
        return tracked, lost
    overlap = box_iou(np.array([t.xyxy() for t in tracked]), np.array([t.xyxy() for t in lost])) > 0.85
    drop_tracked, drop_lost = set(), set()
    for i, j in zip(*np.nonzero(overlap)):
        if tracked[i].frame - tracked[i].start_frame > lost[j].frame - lost[j].start_frame:
            drop_lost.add(j)
        else:
            drop_tracked.add(i)
    return [t for i, t in enumerate(tracked) if i not in drop_tracked], [t for j, t in enumerate(lost) if j not in drop_lost]


def track_color(track_id: int) -> Tuple[int, int, int]:
    """A bright BGR colour fixed per track id; consecutive ids are far apart in hue (golden-ratio steps)."""
    hue = (track_id * 0.618033988749895) % 1.0
    sector, fraction = divmod(hue * 6.0, 1.0)
    high, rising, falling = 255, int(255 * fraction), int(255 * (1 - fraction))
    low = 40
    rgb = [
        (high, rising, low), (falling, high, low), (low, high, rising),
        (low, falling, high), (rising, low, high), (high, low, falling),
    ][int(sector)]  # fmt: skip
    return (max(rgb[2], low), max(rgb[1], low), max(rgb[0], low))

