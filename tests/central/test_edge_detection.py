"""`fedge edge` with a detector: the same rows as `fedge serve`'s /predict, text and JSON
output, image files as inputs, and the boxes drawn on the images.

A tiny detector trained for a few steps on 32×32 canvases (the plumbing matters here, not
its accuracy), registered twice: as the job registers it, and with category names.
"""

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.edge import EdgeApp, load_inputs
from fedge.central.edge_images import load_image
from fedge.central.jobs import prepare_job, register_job, run_job
from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.central.train_config import parse_train_config
from fedge.cli.main import app
from fedge.data.canvases import CanvasConfig, fashion_mnist_canvases
from fedge.errors import ConfigError, DataError

runner = CliRunner()
SIZE = 32
# Input 1×32×32 → output (10 + 4)×8×8: stride 4, as the centernet preset but tiny.
SPEC = json.loads((Path(__file__).parents[1] / "fixtures" / "tiny_centernet.json").read_text())
# Low enough that the briefly trained model finds a few boxes per canvas.
OPTIONS = {"score_threshold": 0.05, "max_detections": 3}
FLAGS = ["--score-threshold", "0.05", "--max-detections", "3"]


@pytest.fixture(scope="module")
def canvases():
    config = CanvasConfig(size=SIZE, max_items=2, max_scale=1.1)
    return fashion_mnist_canvases(16, 4, seed=3, config=config)


@pytest.fixture(scope="module")
def store(tmp_path_factory, canvases):
    """Models "named" (as `fedge train --register` records it, with other serving
    defaults) and "detector" (the same files, its task naming no categories), both in
    production at version 1."""
    root = tmp_path_factory.mktemp("edge-detect") / "store"
    DatasetStore(LocalStore(root)).upload("canvases", DatasetArrays.from_detection(*canvases))
    (root.parent / "spec.json").write_text(json.dumps(SPEC))
    settings = {"epochs": 2, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "eval_batch_size": 4}
    config = parse_train_config(
        {
            "name": "detect",
            "store": str(root),
            "dataset": {"name": "canvases"},
            "model": {"spec": str(root.parent / "spec.json")},
            "train": settings,
        }
    )
    job = prepare_job(config)
    result = run_job(job, tmp_path_factory.mktemp("runs") / "job")
    # A few steps teach the heatmaps a little but not yet the sizes (all near 0): offset
    # the width and height channels by 3 and 5 cells, for boxes of about 12×20 pixels.
    head = f"{job.spec.layer_names()[-1]}.bias"
    result.params[head] = result.params[head] + torch.tensor([0.0] * 10 + [3.0, 5.0, 0, 0])
    registry = ModelRegistry(LocalStore(root))
    version = register_job(result, job, "trained", str(root))
    assert version.task["categories"] == list(canvases[0].categories)  # fedge train's record
    files = {name: registry.read_file(version, name) for name in version.files}
    # "detector": a version whose task names no categories (registered before it could).
    unnamed = {k: v for k, v in version.task.items() if k != "categories"}
    registry.register("detector", files, task=unnamed)
    # Served defaults of its own, which the edge app must take from the task as well.
    named = {"score_threshold": 0.1, "max_detections": 2}
    registry.register("named", files, task={**version.task, **named})
    for name in ("detector", "named"):
        registry.promote(name, 1)
    return root


@pytest.fixture(scope="module")
def url(store, tmp_path_factory, serve_process):
    log = tmp_path_factory.mktemp("edge-detect-log") / "server.log"
    with serve_process(store, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def cache(url, tmp_path_factory):
    """An edge cache holding both models."""
    folder = tmp_path_factory.mktemp("edge-cache")
    for name in ("detector", "named"):
        EdgeApp(name, url, folder).update()
    return folder


@pytest.fixture
def edge(cache):
    def invoke(*args):
        return runner.invoke(app, ["edge", "predict", *map(str, args), "--cache", str(cache)])

    return invoke


@pytest.fixture(scope="module")
def pictures(canvases, tmp_path_factory):
    """The first two test canvases as 8-bit grayscale PNG files, and their arrays."""
    folder = tmp_path_factory.mktemp("pictures")
    x = canvases[1].x[:2].numpy()
    pixels = np.round(x[:, 0] * 255).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        Image.fromarray(image, "L").save(folder / f"canvas{i}.png")
        paths.append(folder / f"canvas{i}.png")
    return paths, pixels


def server_rows(url, model, x, **options):
    body = {"model": model, "instances": x.tolist(), **options}
    return httpx.post(f"{url}/predict", json=body, timeout=30).json()


def outline(row, size=SIZE):
    """The pixels a one-pixel outline of ``row``'s box covers: the outermost pixels it
    touches (columns floor(xmin·W) to ceil(xmax·W) - 1, rows likewise)."""
    left, top = math.floor(row[2] * size), math.floor(row[3] * size)
    right, bottom = math.ceil(row[4] * size) - 1, math.ceil(row[5] * size) - 1
    mask = np.zeros((size, size), dtype=bool)
    mask[top : bottom + 1, [left, right]] = True
    mask[[top, bottom], left : right + 1] = True
    return mask


def drawn(path, plain):
    """Where the PNG at ``path`` differs from the grayscale ``plain`` image."""
    with Image.open(path) as image:
        assert (image.mode, image.size) == ("RGB", plain.shape[::-1])
        rgb = np.asarray(image)
    return (rgb != plain[:, :, None]).any(axis=2)


# --- the same answer as the server ----------------------------------------------------------


EVERY_PEAK = {"score_threshold": 0.0, "max_detections": 1000}


@pytest.mark.parametrize("model", ["detector", "named"])
@pytest.mark.parametrize("options", [OPTIONS, {}, EVERY_PEAK, {"max_detections": 1}])
def test_edge_rows_are_the_servers_rows(url, cache, canvases, model, options):
    x = canvases[1].x.numpy()
    answer = server_rows(url, model, x, **options)
    result = EdgeApp(model, cache=cache).predict(x, **options)
    assert (result.model, result.version) == (model, 1)
    assert result.prediction() == answer["prediction"]  # exactly: the same float32 rows
    counts = [len(rows) for rows in result.rows]
    if options == OPTIONS:
        assert counts == [3] * 4
    elif options == EVERY_PEAK:
        assert min(counts) > 10
    elif options == {} and model == "named":
        assert counts == [2] * 4  # its task's max_detections, above its threshold 0.1


def test_json_output_is_the_servers_answer(url, edge, canvases, tmp_path):
    x = canvases[1].x.numpy()
    np.save(tmp_path / "x.npy", x)
    result = edge("detector", tmp_path / "x.npy", *FLAGS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == server_rows(url, "detector", x, **OPTIONS)


# --- an image as the request body -------------------------------------------------------------


def post_image(url, data, media="image/png", **query):
    params = {"model": "detector", **query}
    headers = {"Content-Type": media}
    return httpx.post(f"{url}/predict", content=data, params=params, headers=headers, timeout=30)


def test_a_png_body_gets_the_rows_of_its_pixels_as_json_instances(url, pictures):
    """A device posts the picture it took: the answer is the JSON answer for its pixels
    divided by 255, exactly (the same float32 input, the same decoding)."""
    paths, pixels = pictures
    for path, image in zip(paths, pixels, strict=True):
        answer = post_image(url, path.read_bytes(), **OPTIONS)
        assert answer.status_code == 200, answer.text
        x = image[None, None].astype(np.float32) / 255.0
        assert answer.json() == server_rows(url, "detector", x, **OPTIONS)
        assert len(answer.json()["prediction"][0]) == 3
    # JPEG too (lossy: its own pixels, read back as the server reads them)
    jpeg = io.BytesIO()
    Image.fromarray(pixels[0], "L").save(jpeg, "JPEG", quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())))[None, None] / np.float32(255)
    answer = post_image(url, jpeg.getvalue(), "image/jpeg", **OPTIONS)
    assert answer.json() == server_rows(url, "detector", decoded, **OPTIONS)


def _png(mode, size):
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_png("L", (40, 24)), "is 40x24 pixels; the model takes 32x32"),
        (_png("RGB", (SIZE, SIZE)), "is RGB; the model takes grayscale (L) images"),
        (_png("RGBA", (SIZE, SIZE)), "has mode 'RGBA': use 8-bit grayscale"),
        (b"\x89PNG\r\n\x1a\n not really", "is corrupt or not an image"),
        (b"", "is corrupt or not an image"),
        # 81 million pixels in an 80 kB file: refused from its header, never decoded
        (_png("L", (9_000, 9_000)), "is 9000x9000 pixels"),
    ],
    ids=["wrong size", "wrong channels", "alpha", "corrupt", "empty", "bomb"],
)
def test_a_bad_image_body_is_refused_with_its_reason(url, data, message):
    answer = post_image(url, data)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200


# --- text output, image files ---------------------------------------------------------------

_LINE = re.compile(r"^  (.+?) +(\d\.\d\d)  \((\S+), (\S+)\)-\((\S+), (\S+)\) px$")


def test_text_output_names_classes_scores_and_pixel_boxes(edge, cache, pictures):
    paths, pixels = pictures
    rows = EdgeApp("named", cache=cache).predict(pixels[:, None] / np.float32(255), **OPTIONS)
    result = edge("named", *paths, *FLAGS)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "named version 1: score >= 0.05, at most 3 per image"
    assert lines[1] == "canvas0.png: 3 detections" and lines[5] == "canvas1.png: 3 detections"
    names = rows.categories
    assert names is not None and names[0] == "t-shirt/top"
    for line, row in zip(lines[2:5] + lines[6:9], [*rows.rows[0], *rows.rows[1]], strict=True):
        name, score, *corners = _LINE.match(line).groups()
        assert name == names[int(row[0])] and float(score) == pytest.approx(row[1], abs=0.005)
        np.testing.assert_allclose([float(c) for c in corners], row[2:] * SIZE, atol=0.05)
    # Without names in the version, the class index.
    unnamed = edge("detector", paths[0], *FLAGS).output.splitlines()[2]
    assert _LINE.match(unnamed).group(1) == f"class {int(rows.rows[0][0][0])}"


def test_image_files_are_scaled_like_training_images(cache, pictures, tmp_path):
    paths, pixels = pictures
    x = load_inputs(paths[0])
    assert x.shape == (1, 1, SIZE, SIZE) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 0], pixels[0].astype(np.float32) / 255.0)
    # An RGB image (as a camera writes it) reads as 3 channels in [0, 1].
    rgb = np.stack([pixels[0], pixels[0] // 2, 255 - pixels[0]], axis=2)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(
        load_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    )


@pytest.mark.parametrize(
    ("mode", "size", "message"),
    [
        ("L", (40, 24), r"is a 40x24 image with 1 channel, shape \(C, H, W\) = \[1, 24, 40\]; "),
        ("RGB", (SIZE, SIZE), r"with 3 channels, shape \(C, H, W\) = \[3, 32, 32\]; "),
        ("RGBA", (SIZE, SIZE), "has mode 'RGBA': use 8-bit grayscale"),
    ],
)
def test_an_image_of_the_wrong_shape_is_refused(edge, tmp_path, mode, size, message):
    path = tmp_path / "wrong.png"
    Image.new(mode, size).save(path)
    result = edge("detector", path, "--draw", tmp_path / "out.png")
    assert result.exit_code == DataError.exit_code, result.output
    assert re.search(message, " ".join(result.output.split()))
    if mode != "RGBA":
        assert "the model expects [1, 32, 32]" in " ".join(result.output.split())
    assert not (tmp_path / "out.png").exists()


# --- drawing --------------------------------------------------------------------------------


def test_draw_changes_exactly_the_pixels_of_the_box_outlines(edge, pictures, tmp_path):
    paths, pixels = pictures
    out = tmp_path / "boxes.png"
    result = edge("detector", paths[0], *FLAGS, "--draw", out, "--no-labels", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["prediction"][0]
    assert len(rows) == 3
    # Boxes that are no squares on the diagonal: swapping x and y would show.
    assert any(outline(r).any() and not (outline(r) == outline(r).T).all() for r in rows)
    expected = np.logical_or.reduce([outline(r) for r in rows])
    np.testing.assert_array_equal(drawn(out, pixels[0]), expected)


def test_draw_writes_one_labelled_png_per_image_into_a_folder(edge, pictures, tmp_path):
    paths, pixels = pictures
    folder = tmp_path / "drawn"
    result = edge("named", *paths, *FLAGS, "--draw", folder)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"drew 2 images to {folder}"
    lines = result.output.splitlines()
    assert sorted(p.name for p in folder.iterdir()) == ["canvas0.png", "canvas1.png"]
    for i, first in enumerate((2, 6)):
        boxes = []
        for line in lines[first : first + 3]:
            x0, y0, x1, y1 = (float(v) for v in _LINE.match(line).groups()[2:])
            boxes.append([0, 0, x0 / SIZE, y0 / SIZE, x1 / SIZE, y1 / SIZE])
        changed = drawn(folder / f"canvas{i}.png", pixels[i])
        # Every printed box is outlined whole (outlines are drawn over the labels); the
        # rest of the change is the labels.
        corners = [outline(b) for b in boxes]
        assert all(changed[c].mean() > 0.9 for c in corners)
        assert changed.sum() > np.logical_or.reduce(corners).sum()


def test_draw_of_one_file_takes_one_image_and_options_need_a_detector(edge, pictures, tmp_path):
    paths, _ = pictures
    result = edge("detector", *paths, "--draw", tmp_path / "one.png")
    assert result.exit_code == ConfigError.exit_code
    assert "writes one image, but the inputs hold 2: give a folder" in result.output
    result = edge("detector", paths[0], "--score-threshold", "1.5")
    assert result.exit_code == ConfigError.exit_code
    assert "score_threshold must lie in [0, 1], got 1.5" in result.output
    result = edge("detector", paths[0], "--probabilities")
    assert result.exit_code == ConfigError.exit_code and "for classifiers only" in result.output
    assert not any(tmp_path.iterdir())


# --- on a device without torch --------------------------------------------------------------


def test_a_detector_runs_and_draws_without_torch(url, tmp_path, pictures, without_torch):
    paths, pixels = pictures
    out = tmp_path / "boxes.png"
    args = ["edge", "predict", "named", str(paths[0]), "--update", "--json", "--draw", str(out)]
    args += ["--server", url, "--cache", str(tmp_path / "cache"), *FLAGS]
    result = subprocess.run(
        [sys.executable, "-c", without_torch, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr  # importing torch would have failed
    expected = server_rows(url, "named", pixels[:1, None] / np.float32(255), **OPTIONS)
    assert json.loads(result.stdout) == expected
    assert drawn(out, pixels[0]).any()
