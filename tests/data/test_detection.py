"""COCO-format detection data: reading, writing, refusing bad input; synthetic canvases."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fedge.data.canvases import CanvasConfig, fashion_mnist_canvases, make_canvases
from fedge.data.detection import DetectionDataset, load_coco, write_coco
from fedge.errors import ConfigError, DataError
from fedge.tasks.boxes import box_iou


def _items(n=12, seed=0):
    """Small bright shapes on black 28x28 tiles, labels 0..2."""
    rng = np.random.default_rng(seed)
    items = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, 10, size=2)
        y1, x1 = rng.integers(16, 26, size=2)
        items[i, y0:y1, x0:x1] = rng.integers(60, 256)
    return items, np.arange(n) % 3


def _fixture(tmp_path, *, mode="L", size=(40, 30), doc_changes=None, files=None):
    """A two-image COCO dataset: categories with ids 7 and 3, one crowd annotation."""
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    for name in ("a.png", "b.jpg"):
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / "images" / name)
    doc = {
        "images": [
            {"id": 5, "file_name": "b.jpg", "width": size[0], "height": size[1]},
            {"id": 2, "file_name": "a.png", "width": size[0], "height": size[1]},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [20.5, 0, 19.5, 30]},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    if doc_changes:
        doc_changes(doc)
    for name, data in (files or {}).items():
        (folder / "images" / name).write_bytes(data)
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder / "annotations.json"


def test_coco_fixture_loads_with_classes_in_category_id_order(tmp_path):
    data = load_coco(_fixture(tmp_path))
    assert data.categories == ("dog", "cat")  # ids 3, 7
    assert data.file_names == ("a.png", "b.jpg")  # image ids 2, 5
    assert data.x.shape == (2, 1, 30, 40) and data.x.dtype == torch.float32
    expected = np.asarray(Image.open(tmp_path / "coco" / "images" / "a.png"), dtype=np.float32)
    np.testing.assert_allclose(data.x[0, 0].numpy(), expected / 255)
    np.testing.assert_array_equal(data.boxes(0), [[1, 1, 2, 11, 7], [0, 20.5, 0, 40, 30]])
    assert data.boxes(1).shape == (0, 5)  # its only annotation is a crowd
    assert data.y.shape == (2, 2, 5) and data.y[1, :, 0].tolist() == [-1, -1]


def test_rgb_images_load_as_three_channels(tmp_path):
    data = load_coco(_fixture(tmp_path, mode="RGB"))
    assert data.x.shape == (2, 3, 30, 40)


def test_a_written_dataset_reads_back_identically(tmp_path):
    items, labels = _items()
    canvases = make_canvases(6, items, labels, seed=3, config=CanvasConfig(size=64),
                             categories=("a", "b", "c"))  # fmt: skip
    path = write_coco(canvases, tmp_path / "out")
    assert path == tmp_path / "out" / "annotations.json"
    back = load_coco(path)
    assert torch.equal(back.x, canvases.x)
    assert torch.equal(back.y, canvases.y)
    assert back.categories == canvases.categories and back.file_names == canvases.file_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    with pytest.raises(DataError, match="already exists"):
        write_coco(canvases, tmp_path / "out")


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    items, labels = _items()
    canvases = make_canvases(3, items, labels, seed=0, config=CanvasConfig(size=64))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        write_coco(canvases, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _set(path, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("changes", "files", "message"),
    [
        (_set(("annotations", 0, "category_id"), 9), None, "annotation 1 has unknown category 9"),
        (_set(("annotations", 0, "image_id"), 99), None, "unknown image id 99"),
        (_set(("annotations", 1, "bbox"), [30, 0, 12, 30]), None,
         r"annotation 2 has box \[30, 0, 12, 30\] outside its 40x30 image 'a.png'"),
        (_set(("annotations", 1, "bbox"), [-3, 0, 5, 5]), None, "outside"),
        (_set(("annotations", 1, "bbox"), [1, 2, 0, 5]), None, "empty box"),
        (_set(("annotations", 1, "bbox"), [1, 2, 3]), None, "4 numbers"),
        (_set(("annotations", 1, "bbox"), [1, 2, "a", 4]), None, "4 numbers"),
        (_set(("images", 0, "width"), 41), None, "'b.jpg' is 40x30 pixels but the annotation "
         "file says 41x30"),
        (_set(("images", 0, "file_name"), "../../etc/passwd"), None, "relative"),
        (_set(("images", 0, "file_name"), "missing.png"), None, "'missing.png' not found"),
        (None, {"b.jpg": b"\x89PNG\r\n\x1a\n this is not an image"}, "'b.jpg' is corrupt"),
        (_set(("categories",), [{"id": 7, "name": "cat"}, {"id": 7, "name": "dog"}]), None,
         "two categories have id 7"),
        (_set(("images",), "nope"), None, "needs a 'images' list"),
        (_set(("images", 1, "id"), "2"), None, r"images\[1\] needs 'id'"),
    ],
)  # fmt: skip
def test_bad_annotations_and_images_are_named(tmp_path, changes, files, message):
    with pytest.raises(DataError, match=message):
        load_coco(_fixture(tmp_path, doc_changes=changes, files=files))


def test_a_box_overhanging_by_less_than_a_pixel_is_clipped(tmp_path):
    path = _fixture(tmp_path, doc_changes=_set(("annotations", 1, "bbox"), [20, -0.5, 20.8, 30]))
    # x: 20 + 20.8 = 40.8 -> 40; y: -0.5 -> 0, bottom -0.5 + 30 = 29.5
    assert load_coco(path).boxes(0)[1].tolist() == [0, 20, 0, 40, 29.5]


def test_images_of_another_size_or_channel_count_are_refused(tmp_path):
    path = _fixture(tmp_path)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8), "RGB").save(tmp_path / "coco/images/b.jpg")
    with pytest.raises(DataError, match=r"'b.jpg' has shape .* \[3, 30, 40\], expected "
                       r"\[1, 30, 40\] \(channels"):  # fmt: skip
        load_coco(path)
    with pytest.raises(DataError, match=r"'a.png' has shape .*expected \[1, 32, 32\]"):
        load_coco(_fixture(tmp_path / "2"), input_shape=(1, 32, 32))
    Image.fromarray(np.zeros((30, 40, 4), np.uint8), "RGBA").save(tmp_path / "coco/images/a.png")
    with pytest.raises(DataError, match=r"'a\.png' has mode 'RGBA'"):
        load_coco(path)


def test_unreadable_annotation_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not readable JSON"):
        load_coco(tmp_path / "bad.json")


def test_dataset_shapes_are_checked():
    with pytest.raises(DataError, match=r"\(N, M, 5\)"):
        DetectionDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 4), ("a",))


def test_canvases_are_deterministic_by_seed():
    items, labels = _items()
    config = CanvasConfig(size=64)
    a = make_canvases(8, items, labels, seed=5, config=config)
    b = make_canvases(8, items, labels, seed=5, config=config)
    c = make_canvases(8, items, labels, seed=6, config=config)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_a_lone_items_box_is_its_non_zero_pixels():
    items, labels = _items()
    data = make_canvases(20, items, labels, seed=0, config=CanvasConfig(size=64, max_items=1))
    for i in range(len(data)):
        (row,) = data.boxes(i)
        ys, xs = np.nonzero(data.x[i, 0].numpy())
        assert row[1:].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert row[0] in labels


def test_canvases_hold_one_to_max_items_inside_and_overlapping_little():
    items, labels = _items()
    config = CanvasConfig(size=64, max_items=3, max_overlap=0.2)
    data = make_canvases(40, items, labels, seed=1, config=config)
    counts = [len(data.boxes(i)) for i in range(len(data))]
    assert min(counts) >= 1 and max(counts) == 3
    for i in range(len(data)):
        boxes = data.boxes(i)[:, 1:]
        assert (boxes >= 0).all() and (boxes <= 64).all()
        iou = box_iou(boxes, boxes)
        assert (iou[~np.eye(len(boxes), dtype=bool)] <= 0.2).all()
        assert data.x[i].max() > 0


def test_canvas_config_is_checked():
    with pytest.raises(ConfigError, match="do not fit"):
        CanvasConfig(size=40, max_scale=2.0)
    with pytest.raises(ConfigError, match="max_items"):
        CanvasConfig(max_items=0)


def test_fashion_mnist_canvases_use_unseen_items_for_held_out_canvases():
    try:
        train, test = fashion_mnist_canvases(12, 6, seed=0)
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    assert train.x.shape == (12, 1, 96, 96) and test.x.shape == (6, 1, 96, 96)
    assert train.num_classes == 10 and train.categories[0] == "t-shirt/top"
    again, _ = fashion_mnist_canvases(12, 6, seed=0)
    assert torch.equal(again.x, train.x)
    sizes = np.concatenate([train.boxes(i)[:, 3:] - train.boxes(i)[:, 1:3] for i in range(12)])
    assert sizes.max() <= round(28 * 1.8) and sizes.min() >= 1
