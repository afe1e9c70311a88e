"""The edge app's detection path on images wider than high (24×40), where a height/width
mix-up cannot hide behind a square: the decoded rows, the pixel boxes, the drawn outlines
and the image reader, each against numbers worked out by hand."""

import math

import numpy as np
import pytest
from PIL import Image

from fedge.central.edge import EdgeApp
from fedge.central.edge_images import draw_detections, load_image, pixel_box

HEIGHT, WIDTH, STRIDE = 24, 40, 4  # an output map of 6 rows × 10 columns


def _one_box_map():
    """Class 1 of 2 peaks at row 2, column 7 (logit 3): size 4 × 2 cells, offset (0, 0)."""
    outputs = np.full((1, 2 + 4, HEIGHT // STRIDE, WIDTH // STRIDE), -10.0, dtype=np.float32)
    outputs[0, 1, 2, 7] = 3.0
    outputs[0, 2:6, 2, 7] = [4.0, 2.0, 0.0, 0.0]  # width, height, dx, dy in cells
    return outputs


def test_a_detection_on_a_wide_image_decodes_to_its_columns_and_rows(tmp_path):
    app = EdgeApp("wide", None, tmp_path / "cache")
    task = {"kind": "detection", "num_classes": 2, "score_threshold": 0.3}
    found = app._detections(_one_box_map(), task, (1, HEIGHT, WIDTH), 1, None, None)
    assert found.image_size == (HEIGHT, WIDTH)
    (row,) = found.rows[0]
    # centre (7, 2) cells = (28, 8) px; 4 × 2 cells = 16 × 8 px → x 20..36 of 40, y 4..12 of 24
    expected = [1, 1 / (1 + math.exp(-3.0)), 20 / 40, 4 / 24, 36 / 40, 12 / 24]
    np.testing.assert_allclose(row, expected, rtol=0, atol=1e-6)
    assert pixel_box(row, (HEIGHT, WIDTH)) == (20, 4, 35, 11)  # columns 20–35, rows 4–11


def test_the_outline_is_drawn_on_the_boxes_columns_and_rows():
    row = np.array([[1, 0.9, 20 / 40, 4 / 24, 36 / 40, 12 / 24]], dtype=np.float32)
    drawn = draw_detections(np.zeros((1, HEIGHT, WIDTH), np.float32), row, labels=False)
    assert drawn.size == (WIDTH, HEIGHT)  # PIL: (width, height)
    changed = np.asarray(drawn).any(axis=2)
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[4, 20:36] = expected[11, 20:36] = True  # top and bottom edges
    expected[4:12, 20] = expected[4:12, 35] = True  # left and right edges
    np.testing.assert_array_equal(changed, expected)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_wide_image_file_is_read_as_channels_rows_columns(tmp_path, mode):
    pixels = np.zeros((HEIGHT, WIDTH), np.uint8)
    pixels[5, 30] = 255  # row 5, column 30
    image = Image.fromarray(pixels, "L").convert(mode)
    image.save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png")
    assert x.shape == ({"L": 1, "RGB": 3}[mode], HEIGHT, WIDTH)
    assert np.argwhere(x[0] == 1.0).tolist() == [[5, 30]]
