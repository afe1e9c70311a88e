"""CenterNet targets, focal loss and decoding (PyTorch and its NumPy twin)."""

import math

import numpy as np
import pytest
import torch

from fedge.tasks import centernet
from fedge.tasks.responses import decode_detections


def _reference_radius(height, width, min_overlap=0.7):
    """CenterNet's draw_gaussian.gaussian_radius, transcribed from the paper's code."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (8, 8), (12, 4), (20, 30)])
def test_gaussian_radius_is_centernets(h, w):
    assert centernet.gaussian_radius(h, w) == pytest.approx(_reference_radius(h, w), rel=1e-12)


def test_encode_puts_a_unit_peak_at_the_centre_cell_with_size_and_offset():
    # box 16..40 x 8..28 px at stride 4: centre (7.0, 4.5) cells, size 6 x 5 cells
    boxes = torch.tensor([[[2, 16, 8, 40, 28], [-1, 0, 0, 0, 0]]], dtype=torch.float32)
    t = centernet.encode(boxes, num_classes=3, stride=4, output_size=(12, 12))
    assert t.heatmap.shape == (1, 3, 12, 12)
    assert t.heatmap[0, 2, 4, 7] == 1.0 and (t.heatmap == 1).sum() == 1
    assert t.heatmap[0, :2].abs().sum() == 0  # other classes untouched
    radius = max(0, int(_reference_radius(5, 6)))
    sigma = (2 * radius + 1) / 6
    assert radius >= 1
    assert t.heatmap[0, 2, 4, 7 + 1] == pytest.approx(math.exp(-1 / (2 * sigma**2)))
    assert t.heatmap[0, 2, 4, 7 + radius + 1] == 0  # outside the window
    assert t.mask.sum() == 1 and t.mask[0, 4, 7] == 1
    assert t.size[0, :, 4, 7].tolist() == [6.0, 5.0]
    assert t.offset[0, :, 4, 7].tolist() == pytest.approx([0.0, 0.5])
    assert t.num_objects.tolist() == [1]


def test_overlapping_gaussians_of_one_class_merge_by_maximum():
    boxes = torch.tensor([[[0, 0, 0, 24, 24], [0, 8, 0, 32, 24]]], dtype=torch.float32)
    two = centernet.encode(boxes, num_classes=1, stride=4, output_size=(8, 8)).heatmap
    a = centernet.encode(boxes[:, :1], num_classes=1, stride=4, output_size=(8, 8)).heatmap
    b = centernet.encode(boxes[:, 1:], num_classes=1, stride=4, output_size=(8, 8)).heatmap
    assert torch.equal(two, torch.maximum(a, b))
    assert (two == 1).sum() == 2


def test_focal_loss_matches_the_formula_on_two_cells():
    # one positive cell (y = 1) and one negative (y = 0.5), both at logit 0 (p = 1/2):
    # -(1-p)^2 log p  +  -(1-y)^4 p^2 log(1-p)
    logits = torch.zeros(1, 1, 1, 2)
    heat = torch.tensor([[[[1.0, 0.5]]]])
    expected = 0.25 * math.log(2) + 0.5**4 * 0.25 * math.log(2)
    assert centernet.focal_loss(logits, heat).item() == pytest.approx(expected, rel=1e-6)
    # confident and right costs almost nothing; confident and wrong costs a lot
    assert centernet.focal_loss(torch.tensor([[[[9.0, -9.0]]]]), heat).item() < 1e-3
    assert centernet.focal_loss(torch.tensor([[[[-9.0, 9.0]]]]), heat).item() > 5


def test_loss_terms_divide_by_each_images_object_count():
    boxes = torch.tensor(
        [[[0, 0, 0, 16, 16], [0, 16, 16, 32, 32]], [[1, 4, 4, 20, 28], [-1, 0, 0, 0, 0]]],
        dtype=torch.float32,
    )
    targets = centernet.encode(boxes, num_classes=2, stride=4, output_size=(8, 8))
    outputs = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    terms = centernet.loss_terms(outputs, targets, 2)
    n = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(
        terms["heatmap"], centernet.focal_loss(outputs[:, :2], targets.heatmap) / n
    )
    size_error = ((outputs[:, 2:4] - targets.size).abs() * targets.mask[:, None]).sum((1, 2, 3))
    torch.testing.assert_close(terms["size"], size_error / (2 * n))
    torch.testing.assert_close(
        terms["loss"], terms["heatmap"] + 0.1 * terms["size"] + terms["offset"]
    )


def _map_with_peaks():
    """3 classes on an 8x8 map of a 32x32 image (stride 4): two peaks and a weaker
    neighbour of the first that non-maximum suppression must drop."""
    out = torch.full((1, 7, 8, 8), -10.0)
    out[0, 3:7] = 0.0
    out[0, 1, 2, 3] = 2.0  # class 1 at row 2, column 3
    out[0, 1, 2, 4] = 1.5  # its neighbour
    out[0, 2, 5, 6] = 0.5  # class 2 at row 5, column 6
    out[0, 3:7, 2, 3] = torch.tensor([4.0, 2.0, 0.5, 0.25])  # w, h, dx, dy in cells
    out[0, 3:7, 5, 6] = torch.tensor([2.0, 6.0, 0.0, 0.0])
    return out


def _expected_rows():
    s = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-0.5))
    # first: centre (3.5, 2.25) cells, 4 x 2 cells -> x 1.5..5.5, y 1.25..3.25 cells
    first = [1, s[0], 1.5 / 8, 1.25 / 8, 5.5 / 8, 3.25 / 8]
    # second: centre (6, 5), 2 x 6 cells -> x 5..7, y 2..8
    second = [2, s[1], 5 / 8, 2 / 8, 7 / 8, 8 / 8]
    return np.array([first, second])


def test_decoding_a_synthetic_map_returns_its_peaks():
    rows = centernet.decode(_map_with_peaks(), num_classes=3, image_size=(32, 32),
                            score_threshold=0.3)  # fmt: skip
    np.testing.assert_allclose(rows[0].numpy(), _expected_rows(), rtol=0, atol=1e-6)
    strict = centernet.decode(_map_with_peaks(), num_classes=3, image_size=(32, 32),
                              score_threshold=0.7)  # fmt: skip
    assert strict[0].shape == (1, 6) and strict[0][0, 0] == 1
    top = centernet.decode(_map_with_peaks(), num_classes=3, image_size=(32, 32),
                           score_threshold=0.0, max_detections=1)  # fmt: skip
    np.testing.assert_allclose(top[0].numpy(), _expected_rows()[:1], atol=1e-6)


def test_numpy_decoding_is_the_twin_of_pytorch():
    rows = decode_detections(_map_with_peaks().numpy(), num_classes=3, image_size=(32, 32))
    np.testing.assert_allclose(rows[0], _expected_rows(), rtol=0, atol=1e-6)
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(4, 7, 12, 10, generator=generator) * 2
    for threshold, top in [(0.0, 100), (0.5, 100), (0.0, 7)]:
        ours = centernet.decode(outputs, num_classes=3, image_size=(48, 80),
                                score_threshold=threshold, max_detections=top)  # fmt: skip
        twin = decode_detections(outputs.numpy(), num_classes=3, image_size=(48, 80),
                                 score_threshold=threshold, max_detections=top)  # fmt: skip
        for a, b in zip(ours, twin, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-6)
    assert all(len(r) == 7 for r in twin)


def test_boxes_are_clipped_to_the_image():
    out = torch.full((1, 5, 4, 4), -10.0)
    out[0, 0, 0, 0] = 3.0
    out[0, 1:5, 0, 0] = torch.tensor([4.0, 4.0, 0.0, 0.0])  # centre at the corner
    row = centernet.decode(out, num_classes=1, image_size=(16, 16))[0][0]
    assert row[2:].tolist() == [0.0, 0.0, 0.5, 0.5]
