"""Metrics against a brute-force per-pixel reference (the official evaluator's loop), level merges
against scoring merged labels directly, numpy/torch parity, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idd_edge.labels import LABELS, LEVEL_CLASS_NAMES, VOID, id_to_encoding_lut, num_classes
from idd_edge.seg.metrics import (
    _bincount_on_device,
    confusion_matrix,
    iou_deltas,
    level_class_map,
    merge_confusion,
    segmentation_scores,
    update_confusion,
)

LEVEL3 = LEVEL_CLASS_NAMES["level3"]


def loop_confusion(pred, target, n, ignore_index=VOID):
    """Reference: one pixel at a time, as the official evaluator does."""
    matrix = np.zeros((n, n), dtype=np.int64)
    for gt, p in zip(np.asarray(target).ravel().tolist(), np.asarray(pred).ravel().tolist()):
        if gt == ignore_index:
            continue
        matrix[gt, p] += 1
    return matrix


def official_ious(pred, target, n):
    """The official evaluator: a misc bin (index n) for void ground truth, FP summed over valid rows only."""
    matrix = np.zeros((n + 1, n + 1), dtype=np.int64)
    for gt, p in zip(np.asarray(target).ravel().tolist(), np.asarray(pred).ravel().tolist()):
        matrix[n if gt == VOID else gt, p] += 1
    ious = []
    for c in range(n):
        tp = matrix[c, c]
        fn = matrix[c, :].sum() - tp
        fp = matrix[[i for i in range(n) if i != c], c].sum()
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
    return ious


def random_labels(rng, shape, n, void_fraction=0.2):
    target = rng.integers(0, n, size=shape)
    target[rng.random(shape) < void_fraction] = VOID
    # Predictions agree with the target most of the time so IoUs are not all tiny.
    pred = np.where(rng.random(shape) < 0.6, np.where(target == VOID, 0, target), rng.integers(0, n, size=shape))
    return pred.astype(np.uint8), target.astype(np.uint8)


@pytest.mark.parametrize("n", [1, 7, 26])
def test_matches_per_pixel_loop_reference(n):
    rng = np.random.default_rng(n)
    pred, target = random_labels(rng, (3, 37, 41), n)
    cm = confusion_matrix(pred, target, n)
    assert cm.dtype == np.int64 and cm.shape == (n, n)
    np.testing.assert_array_equal(cm, loop_confusion(pred, target, n))
    assert cm.sum() == (target != VOID).sum()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_loop_reference_on_arbitrary_inputs(data):
    n = data.draw(st.integers(1, 8))
    size = data.draw(st.integers(0, 60))
    target = np.array(data.draw(st.lists(st.sampled_from([*range(n), VOID]), min_size=size, max_size=size)),
                      dtype=np.int64)
    pred = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size)), dtype=np.int64)
    np.testing.assert_array_equal(confusion_matrix(pred, target, n), loop_confusion(pred, target, n))


def test_scores_match_official_iou_semantics():
    rng = np.random.default_rng(3)
    pred, target = random_labels(rng, (2, 50, 60), 26)
    target[target == 17] = VOID  # one class absent from ground truth but still predicted somewhere
    scores = segmentation_scores(confusion_matrix(pred, target, 26), LEVEL3)
    expected = official_ious(pred, target, 26)
    for name, want in zip(LEVEL3, expected):
        assert scores["per_class_iou"][name] == pytest.approx(want)
    assert scores["per_class_iou"]["billboard"] == 0.0  # predicted, never true: IoU 0, not None
    assert scores["miou"] == pytest.approx(np.mean(expected))
    valid = target != VOID
    assert scores["pixel_accuracy"] == pytest.approx((pred[valid] == target[valid]).mean())


def test_prediction_on_void_pixels_is_not_a_false_positive():
    target = np.array([0, 0, VOID, VOID])
    pred = np.array([0, 0, 1, 1])
    scores = segmentation_scores(confusion_matrix(pred, target, 2), ["a", "b"])
    assert scores["per_class_iou"] == {"a": 1.0, "b": None}
    assert scores["miou"] == 1.0


def test_absent_classes_get_none_and_are_left_out_of_the_mean():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    scores = segmentation_scores(confusion_matrix(pred, target, 3), ["a", "b", "c"])
    assert scores["per_class_iou"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": None}
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scores["pixel_accuracy"] == 0.75
    assert all(isinstance(v, float) for v in (scores["miou"], scores["pixel_accuracy"]))


@pytest.mark.parametrize("target", [np.zeros((0,), np.uint8), np.full((4, 5), VOID, np.uint8)],
                         ids=["empty", "all-ignore"])
def test_no_counted_pixels(target):
    cm = confusion_matrix(np.zeros(target.shape, np.uint8), target, 4)
    np.testing.assert_array_equal(cm, np.zeros((4, 4)))
    scores = segmentation_scores(cm, list("abcd"))
    assert scores == {"miou": None, "pixel_accuracy": None, "per_class_iou": dict.fromkeys("abcd")}
    torch_cm = confusion_matrix(torch.from_numpy(np.zeros(target.shape, np.uint8)), torch.from_numpy(target), 4)
    np.testing.assert_array_equal(torch_cm, cm)


def test_numpy_and_torch_inputs_give_identical_matrices():
    rng = np.random.default_rng(7)
    pred, target = random_labels(rng, (4, 33, 29), 16)
    expected = confusion_matrix(pred, target, 16)
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(target)),
        (torch.from_numpy(pred).long(), torch.from_numpy(target).long()),
        (torch.from_numpy(pred).int(), target),  # mixed: torch prediction, numpy ground truth
        (pred.astype(np.int32), torch.from_numpy(target.astype(np.int16))),
    ]
    for p, t in variants:
        cm = confusion_matrix(p, t, 16)
        assert isinstance(cm, np.ndarray) and cm.dtype == np.int64
        np.testing.assert_array_equal(cm, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64])
def test_every_integer_dtype(dtype):
    rng = np.random.default_rng(17)
    pred, target = random_labels(rng, (5, 31), 26)
    ignore = 127 if dtype == np.int8 else VOID
    target[target == VOID] = ignore
    expected = loop_confusion(pred, target, 26, ignore_index=ignore)
    cm = confusion_matrix(pred.astype(dtype), target.astype(dtype), 26, ignore_index=ignore)
    np.testing.assert_array_equal(cm, expected)


def test_accelerator_path_matches_reference_when_run_on_cpu():
    """The torch-only path used for GPU tensors (CPU tensors take the faster numpy path)."""
    rng = np.random.default_rng(19)
    pred, target = random_labels(rng, (3, 21, 17), 26)
    counts = _bincount_on_device(torch.from_numpy(pred), torch.from_numpy(target), 26, VOID)
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.numpy(), loop_confusion(pred, target, 26))
    empty = _bincount_on_device(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8), 4, VOID)
    assert empty.shape == (4, 4) and int(empty.sum()) == 0
    with pytest.raises(ValueError, match=r"ground truth .*: 40, 77"):
        _bincount_on_device(torch.zeros(4, dtype=torch.long), torch.tensor([77, 40, 255, 0]), 26, VOID)
    with pytest.raises(ValueError, match=r"prediction .*: 26"):
        _bincount_on_device(torch.tensor([26, 0]), torch.tensor([255, 0]), 26, VOID)


def test_update_confusion_accumulates_in_place_numpy_and_torch():
    rng = np.random.default_rng(11)
    batches = [random_labels(rng, (2, 9, 13), 7) for _ in range(3)]
    expected = sum(loop_confusion(p, t, 7) for p, t in batches)
    cm_numpy = np.zeros((7, 7), np.int64)
    cm_torch = torch.zeros((7, 7), dtype=torch.int64)
    for p, t in batches:
        assert update_confusion(cm_numpy, p, t) is cm_numpy
        assert update_confusion(cm_torch, torch.from_numpy(p), torch.from_numpy(t)) is cm_torch
    np.testing.assert_array_equal(cm_numpy, expected)
    np.testing.assert_array_equal(cm_torch.numpy(), expected)
    # torch matrices are accepted by the scoring functions too
    assert segmentation_scores(cm_torch, list("abcdefg")) == segmentation_scores(cm_numpy, list("abcdefg"))


def test_custom_ignore_index():
    target = np.array([0, 1, 9, 9])
    pred = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(confusion_matrix(pred, target, 2, ignore_index=9), [[1, 0], [0, 1]])


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"prediction holds class ids outside 0\.\.2: 3, 255"):
        confusion_matrix(np.array([0, 3, 255]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match=r"ground truth holds class ids outside 0\.\.2 or ignore value 255: 5, 7"):
        confusion_matrix(np.array([0, 0, 0, 0]), np.array([7, 5, 255, 1]), 3)
    with pytest.raises(ValueError, match=r"ground truth .*: -1"):
        confusion_matrix(torch.tensor([0, 0]), torch.tensor([-1, 0]), 3)
    with pytest.raises(ValueError, match=r"prediction .*: 4"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([255, 0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="3 class names"):
        segmentation_scores(np.zeros((2, 2), np.int64), ["a", "b", "c"])


def _official_ids(rng, shape, with_void):
    """Random official label ids (0-39); void rows (35-39) only in the ground truth."""
    valid = [label.id for label in LABELS if label.level3Id != VOID]
    void = [label.id for label in LABELS if label.level3Id == VOID]
    ids = rng.choice(valid, size=shape)
    if with_void:
        is_void = rng.random(shape) < 0.15
        ids[is_void] = rng.choice(void, size=int(is_void.sum()))
    return ids


@pytest.mark.parametrize(("from_level", "to_level"),
                         [("level3", "level2"), ("level3", "level1"), ("level2", "level1"), ("level3", "level3")])
def test_merge_equals_scoring_merged_labels_directly(from_level, to_level):
    """Encode random official label ids at both levels straight from the table, then compare the merged
    fine matrix with the matrix of the coarse labels."""
    rng = np.random.default_rng(5)
    gt_ids = _official_ids(rng, (3, 40, 40), with_void=True)
    pred_ids = np.where(rng.random(gt_ids.shape) < 0.5, np.where(gt_ids >= 35, 0, gt_ids),
                        _official_ids(rng, gt_ids.shape, with_void=False))
    encode = {level: id_to_encoding_lut(f"{level}Id") for level in ("level1", "level2", "level3")}
    fine = confusion_matrix(encode[from_level][pred_ids], encode[from_level][gt_ids], num_classes(from_level))
    coarse = confusion_matrix(encode[to_level][pred_ids], encode[to_level][gt_ids], num_classes(to_level))
    merged = merge_confusion(fine, from_level, to_level)
    np.testing.assert_array_equal(merged, coarse)
    assert merged.sum() == fine.sum()


def official_level1_merge(level3_cm):
    """The official level-1 merge: its level1 -> level2 index groups applied to the level3 matrix."""
    level1_to_level2 = [[0, 1], [2, 3], [4, 5], [6, 7, 8], [9, 10, 11, 12], [13, 14], [15]]
    merged = np.zeros((7, 7), dtype=np.int64)
    for row, row_members in enumerate(level1_to_level2):
        for col, col_members in enumerate(level1_to_level2):
            merged[row, col] = level3_cm[np.ix_(row_members, col_members)].sum()
    return merged


def test_official_level1_merge_is_wrong_and_ours_is_not():
    level3 = LEVEL_CLASS_NAMES["level3"]
    cm = np.zeros((26, 26), dtype=np.int64)
    cm[level3.index("car"), level3.index("car")] = 100  # all correct: a car is a level1 vehicle
    cm[level3.index("sky"), level3.index("sky")] = 50
    cm[level3.index("car"), level3.index("truck")] = 10  # car/truck confusion: still vehicle at level1
    ours = merge_confusion(cm, "level3", "level1")
    official = official_level1_merge(cm)
    level1 = LEVEL_CLASS_NAMES["level1"]
    assert ours[level1.index("vehicle"), level1.index("vehicle")] == 110
    assert ours[level1.index("sky"), level1.index("sky")] == 50
    assert segmentation_scores(ours, level1)["miou"] == 1.0
    # the official map puts level3 car (9) and truck (10) under "roadside-object" and drops sky (25)
    assert official[level1.index("vehicle")].sum() == 0
    assert official[level1.index("roadside-object"), level1.index("roadside-object")] == 110
    assert official.sum() == 110
    assert not np.array_equal(ours, official)


def test_level_class_map_follows_the_table():
    l3_to_l2 = level_class_map("level3", "level2")
    assert l3_to_l2.tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8, 8, 9, 9, 10, 10, 11, 11, 11, 12, 12, 13, 13, 14, 15]
    assert level_class_map("level3", "level1").tolist() == [0, 0, 1, 1, 2, 2] + [3] * 7 + [4] * 9 + [5, 5, 5, 6]
    with pytest.raises(ValueError, match="finer"):
        level_class_map("level1", "level3")
    with pytest.raises(ValueError, match="unknown label level"):
        level_class_map("level4", "level1")
    with pytest.raises(ValueError, match="26x26"):
        merge_confusion(np.zeros((16, 16), np.int64), "level3", "level1")


def test_iou_deltas():
    deltas = iou_deltas({"a": 0.5, "b": None, "c": 0.9}, {"a": 0.75, "b": 0.1, "c": 0.8, "d": 0.3})
    assert deltas["a"] == 0.25 and deltas["b"] is None and deltas["d"] is None
    assert math.isclose(deltas["c"], -0.1)
    assert list(deltas) == ["a", "b", "c", "d"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_accumulation_stays_on_the_device():
    rng = np.random.default_rng(13)
    pred, target = random_labels(rng, (2, 64, 64), 26)
    cm = torch.zeros((26, 26), dtype=torch.int64, device="cuda")
    update_confusion(cm, torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    assert cm.device.type == "cuda"
    np.testing.assert_array_equal(cm.cpu().numpy(), loop_confusion(pred, target, 26))
    with pytest.raises(ValueError, match="ground truth .*: 30"):
        confusion_matrix(torch.zeros(3, dtype=torch.long, device="cuda"), torch.tensor([0, 30, 255], device="cuda"), 26)
