"""Box conversions and IoU on hand-computed cases."""

import numpy as np
import pytest

from fedge.tasks.boxes import box_area, box_iou, xywh_to_xyxy, xyxy_to_xywh


def test_xywh_and_xyxy_convert_both_ways():
    xywh = np.array([[10, 20, 30, 40], [0, 0, 1, 2.5]])
    xyxy = np.array([[10, 20, 40, 60], [0, 0, 1, 2.5]])
    np.testing.assert_array_equal(xywh_to_xyxy(xywh), xyxy)
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), xywh)
    # any leading axes
    assert xywh_to_xyxy(np.zeros((2, 3, 4))).shape == (2, 3, 4)


def test_iou_of_hand_computed_pairs():
    a = np.array([[0, 0, 10, 10]])
    b = np.array(
        [
            [0, 0, 10, 10],  # identical: 1
            [2, 0, 12, 10],  # shifted 2 px: 80 / 120
            [5, 5, 15, 15],  # quarter overlap: 25 / 175
            [10, 0, 20, 10],  # touching edge: 0
            [2, 2, 4, 4],  # inside: 4 / 100
            [20, 20, 30, 30],  # apart: 0
        ]
    )
    np.testing.assert_allclose(
        box_iou(a, b)[0], [1.0, 80 / 120, 25 / 175, 0.0, 4 / 100, 0.0], rtol=0, atol=1e-12
    )
    # symmetric, pairwise shape
    np.testing.assert_allclose(box_iou(b, a)[:, 0], box_iou(a, b)[0])
    assert box_iou(b, b).shape == (6, 6)
    np.testing.assert_allclose(np.diag(box_iou(b, b)), 1.0)


def test_empty_boxes_have_zero_area_and_zero_iou():
    empty = np.array([[3, 3, 3, 8], [5, 5, 4, 4]])
    np.testing.assert_array_equal(box_area(empty), [0.0, 0.0])
    assert not np.isnan(box_iou(empty, empty)).any()
    np.testing.assert_array_equal(box_iou(empty, empty), 0.0)


@pytest.mark.parametrize("n", [0, 3])
def test_iou_accepts_empty_sets(n):
    assert box_iou(np.zeros((0, 4)), np.ones((n, 4))).shape == (0, n)
