"""The browser client's own examples in real headless Chromium: a folder of images with a
labels.csv, picked in the page's folder or file dialog, becomes the same arrays as
fedge's Python loaders make (8-bit values / 255, channel-first, luma for one channel);
a bad labels.csv is explained; drawings on the page's canvas become examples."""

import base64

import numpy as np
import pytest
from test_browser_client import browser, chromium, origin, page, png, run_js, text_of, wait_for

FIXTURES = (chromium, browser, origin, page)  # the client tests' Chromium and server, here too

CURRENT = """
const main = await import("/client/main.js");
const ex = await main.currentExamples(args[0]);
if (!ex) return null;
return { x: to64(new Uint8Array(ex.x.buffer, ex.x.byteOffset, ex.x.byteLength)),
         y: Array.from(ex.y), n: ex.n, kind: ex.kind, source: ex.source };
"""


def examples_in_page(browser, shape):
    """The page's current examples as the model of input ``shape`` takes them."""
    out = run_js(browser, CURRENT, list(shape))
    x = np.frombuffer(base64.b64decode(out["x"]), dtype=np.float32)
    return x.reshape(out["n"], *shape), np.array(out["y"]), out


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma with Pillow's integer rounding (``Image.convert("L")``)."""
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)


def pick(browser, field, paths):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, field).send_keys("\n".join(str(p) for p in paths))


@pytest.fixture
def folder(tmp_path):
    """Six 8×8 images in a folder (grey, RGB, opaque RGBA, one in a subfolder, one 16×16
    of one colour that must be resized, one without a label) and labels.csv; the
    expected arrays for a (1, 8, 8) and a (3, 8, 8) model, computed here with numpy."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rng.integers(0, 256, (8, 8, 3)), np.full((8, 8, 1), 255)], axis=2)
    deep = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    flat = np.broadcast_to(np.array([200, 40, 90], dtype=np.uint8), (16, 16, 3))
    files = {
        "grey.png": grey,
        "colour.png": rgb,
        "alpha.png": rgba,
        "more/deep.png": deep,
        "big.png": flat,
        "unlabelled.png": grey,
    }
    for name, pixels in files.items():
        (root / name).write_bytes(png(pixels))
    # In an order of its own, with CRLF line ends and a quoted name.
    rows = [("colour.png", 3), ("more/deep.png", 0), ('"grey.png"', 7), ("alpha.png", 1)]
    rows.append(("big.png", 2))
    (root / "labels.csv").write_bytes(
        ("filename,label\r\n" + "".join(f"{f},{y}\r\n" for f, y in rows)).encode()
    )
    as_rgb = {
        "grey.png": np.repeat(grey[..., None], 3, axis=2),
        "colour.png": rgb,
        "alpha.png": rgba[..., :3],
        "more/deep.png": deep,
    }
    order = ["colour.png", "more/deep.png", "grey.png", "alpha.png"]
    gray = np.stack([luma(as_rgb[f]) if f != "grey.png" else grey for f in order])
    return {
        "root": root,
        "files": [root / name for name in files] + [root / "labels.csv"],
        "labels": [3, 0, 7, 1, 2],
        "gray": gray.astype(np.float32)[:, None] / 255,
        "rgb": np.stack([as_rgb[f] for f in order]).astype(np.float32).transpose(0, 3, 1, 2) / 255,
        "flat": np.array([200, 40, 90], dtype=np.float32) / 255,
        "flat_luma": float(luma(np.array([[200, 40, 90]]))[0]) / 255,
        "pixels": as_rgb,
    }


@pytest.mark.parametrize("field", ["data-folder", "data-file"])
def test_a_folder_of_images_and_labels_csv_gives_pythons_arrays(page, browser, folder, field):
    """Picked as a folder (webkitdirectory) or as files: the browser's values for a
    (1, 8, 8) and a (3, 8, 8) model equal numpy's (8-bit / 255, channel-first, Pillow's
    luma) within 1e-6, in the CSV's order with its labels."""
    if field == "data-folder":
        pick(browser, field, [folder["root"]])
    else:
        # Without a folder the files have bare names: "more/deep.png" must then be picked
        # where the CSV says, so this pick leaves the subfolder's image for its own name.
        csv = folder["root"] / "labels.csv"
        csv.write_text(csv.read_text().replace("more/deep.png", "deep.png"))
        pick(browser, field, folder["files"])
    info = wait_for(browser, "data-info", lambda text: "examples" in text)
    assert "5 examples (images)" in info and "5 classes" in info
    assert "1 picked image has no line in labels.csv and is left out" in info
    assert text_of(browser, "error") == ""

    x, y, out = examples_in_page(browser, (1, 8, 8))
    assert out["kind"] == "images"
    assert y.tolist() == folder["labels"]
    assert x.dtype == np.float32 and x.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(x[:4], folder["gray"], atol=1e-6, rtol=0)
    # The 16×16 image of one colour is resized to 8×8: the same colour everywhere.
    np.testing.assert_allclose(x[4], folder["flat_luma"], atol=1.5 / 255, rtol=0)

    x3, y3, _ = examples_in_page(browser, (3, 8, 8))
    assert y3.tolist() == folder["labels"]
    np.testing.assert_allclose(x3[:4], folder["rgb"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        x3[4], folder["flat"][:, None, None] * np.ones((3, 8, 8)), atol=1.5 / 255
    )


def test_luma_is_pillows(folder):
    """The grey conversion the page uses (and ``luma`` here) is Pillow's convert("L")."""
    Image = pytest.importorskip("PIL.Image")
    for name, pixels in folder["pixels"].items():
        with Image.open(folder["root"] / name) as image:
            assert np.array_equal(np.asarray(image.convert("L")), luma(pixels)), name


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("filename,label\na.png,1\nmissing.png,2\n", "line 3 names missing.png, but it is not"),
        ("filename,label\na.png,cat\n", 'line 2: unknown label "cat" for a.png'),
        ("filename,label\na.png,-1\n", 'unknown label "-1"'),
        ("file,label\na.png,1\n", "labels.csv has no column filename"),
        ("a.png,1\nb.png,2\n", "no column filename and label"),
        ("filename,label\na.png,1,extra\n", "line 2 has 3 fields; the header has 2"),
        ("filename,label\na.png,1\nb.png,2\na.png,3\n", "line 4 names a.png again"),
        ("filename,label\n", "has a header but no images"),
    ],
    ids=[
        "missing-file",
        "unknown-label",
        "negative",
        "wrong-column",
        "no-header",
        "fields",
        "twice",
        "empty",
    ],
)
def test_a_bad_labels_csv_is_explained(page, browser, tmp_path, csv, message):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png(np.zeros((8, 8), dtype=np.uint8)))
    (tmp_path / "labels.csv").write_text(csv)
    pick(browser, "data-file", [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "labels.csv"])
    error = wait_for(browser, "error", lambda text: "Cannot use" in text)
    assert message in error
    assert text_of(browser, "data-info") == "no examples"
    assert run_js(browser, CURRENT, [1, 8, 8]) is None
    assert browser.find_element("id", "start").get_attribute("disabled") is not None


def test_images_without_a_csv_or_undecodable_are_refused(page, browser, tmp_path):
    (tmp_path / "a.png").write_bytes(png(np.zeros((8, 8), dtype=np.uint8)))
    pick(browser, "data-file", [tmp_path / "a.png"])
    assert "but no labels.csv" in wait_for(browser, "error", lambda text: "Cannot use" in text)
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    (tmp_path / "labels.csv").write_text("filename,label\na.png,0\nb.png,1\n")
    browser.refresh()
    wait_for(browser, "backend", lambda text: " on " in text)
    pick(browser, "data-file", [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "labels.csv"])
    error = wait_for(browser, "error", lambda text: "Cannot use" in text)
    assert "b.png is not an image this browser can decode" in error


def test_a_label_past_the_models_classes_is_named(page, browser):
    message = run_js(
        browser,
        """
        const { checkExamples } = await import("/client/data.js");
        const ex = { x: new Float32Array(128), y: Int32Array.from([1, 12]), n: 2,
                     shape: [1, 8, 8], names: ["a.png", "cat/b.png"] };
        try { checkExamples(ex, [1, 8, 8], 10); return "accepted"; } catch (e) { return e.message; }
        """,
    )
    assert message == "unknown label 12 (of cat/b.png): the model has 10 classes, labels 0 to 9"


def test_drawings_on_the_canvas_are_examples(page, browser):
    """Draw a stroke, label it 3, add it: one example of class 3, white ink on black, at
    the model's input size; unlabelled or empty drawings are refused."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = browser.find_element(By.ID, "pad")
    browser.find_element(By.ID, "pad-add").click()
    assert "Draw something first" in wait_for(browser, "error", bool)
    box = pad.rect
    step = (box["width"] // 8, box["height"] // 8)
    stroke = ActionChains(browser).move_to_element_with_offset(pad, -box["width"] // 4, 0)
    stroke.click_and_hold().move_by_offset(*step).move_by_offset(*step).release().perform()
    label = browser.find_element(By.ID, "pad-label")
    label.clear()
    label.send_keys("three")
    browser.find_element(By.ID, "pad-add").click()
    assert "class number" in wait_for(browser, "error", lambda text: "three" in text)
    label.clear()
    label.send_keys("3")
    browser.find_element(By.ID, "pad-add").click()
    wait_for(browser, "pad-count", lambda text: text == "1 drawn")
    info = wait_for(browser, "data-info", lambda text: "examples" in text)
    assert "1 examples (images) from your drawings" in info
    x, y, _ = examples_in_page(browser, (1, 28, 28))
    assert y.tolist() == [3]
    assert x.max() > 0.9 and (x == 0).mean() > 0.6  # a white stroke on black
    # The stroke went down and to the right from left of the centre.
    rows, cols = np.nonzero(x[0, 0] > 0.5)
    assert cols.min() < 14 and np.corrcoef(rows, cols)[0, 1] > 0.9
