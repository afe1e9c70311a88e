"""COCO mAP through pycocotools, on cases whose values are computed by hand."""

import numpy as np
import pytest

from fedge.tasks.coco_eval import coco_map

BOX = [0.0, 0.0, 10.0, 10.0]


def _gt(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _det(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def test_perfect_detections_score_one():
    truth = [_gt([0, *BOX], [1, 20, 30, 50, 45]), _gt([1, 5, 5, 40, 60])]
    found = [_det([0, 0.9, *BOX], [1, 0.8, 20, 30, 50, 45]), _det([1, 0.7, 5, 5, 40, 60])]
    assert coco_map(truth, found, num_classes=2) == {"map": 1.0, "map50": 1.0}


def test_a_box_shifted_by_a_fifth_of_its_width_passes_four_of_ten_thresholds():
    # 10x10 box shifted 2 px: IoU = 80 / 120 = 0.667, a match at IoU 0.50, 0.55, 0.60,
    # 0.65 (AP 1 each) and not at 0.70 .. 0.95 (AP 0): mAP@[.5:.95] = 4/10.
    result = coco_map([_gt([0, *BOX])], [_det([0, 0.9, 2, 0, 12, 10])], num_classes=1)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.4)


def test_a_box_shifted_by_half_its_width_misses():
    # IoU = 50 / 150 = 1/3 < 0.5
    result = coco_map([_gt([0, *BOX])], [_det([0, 0.9, 5, 0, 15, 10])], num_classes=1)
    assert result == {"map": 0.0, "map50": 0.0}


def test_finding_one_of_two_boxes_gives_recall_one_half():
    # precision 1 up to recall 0.5, then nothing: 51 of COCO's 101 recall points
    truth = [_gt([0, *BOX], [0, 50, 50, 70, 70])]
    result = coco_map(truth, [_det([0, 0.9, *BOX])], num_classes=1)
    assert result["map50"] == pytest.approx(51 / 101)
    assert result["map"] == pytest.approx(51 / 101)


def test_a_false_positive_ranked_first_halves_the_precision():
    # ranked: wrong box (precision 0 at recall 0), then the right one (precision 1/2 at
    # recall 1): interpolated precision is 1/2 at every recall point.
    found = [_det([0, 0.9, 50, 50, 60, 60], [0, 0.5, *BOX])]
    result = coco_map([_gt([0, *BOX])], found, num_classes=1)
    assert result["map50"] == pytest.approx(0.5)


def test_classes_are_averaged_and_wrong_classes_do_not_match():
    truth = [_gt([0, *BOX], [1, 50, 50, 70, 70])]
    found = [_det([0, 0.9, *BOX], [0, 0.9, 50, 50, 70, 70])]  # second has the wrong class
    result = coco_map(truth, found, num_classes=3)  # class 2 has no boxes: not counted
    assert result["map50"] == pytest.approx(0.5)


def test_padding_rows_are_ignored_and_empty_inputs_are_defined():
    truth = [_gt([0, *BOX], [-1, 0, 0, 0, 0])]
    assert coco_map(truth, [_det([0, 0.9, *BOX])], num_classes=1)["map"] == pytest.approx(1.0)
    assert coco_map(truth, [_det()], num_classes=1) == {"map": 0.0, "map50": 0.0}
    assert np.isnan(coco_map([_gt()], [_det()], num_classes=1)["map"])
    with pytest.raises(ValueError, match="2 ground-truth images but 1"):
        coco_map([_gt(), _gt()], [_det()], num_classes=1)
