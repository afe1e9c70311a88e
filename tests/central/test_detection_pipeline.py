"""Detection through the centralized pipeline: dataset versions of boxes, `fedge train`
with the detection task (one process and data-parallel), the registry's task record, the
ONNX export's decoded detections, and `fedge serve`'s /predict and v2 answers.

The point is the plumbing, not accuracy: a tiny detector on a few 32×32 canvases, 1 epoch.
"""

import asyncio
import io
import json
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from fedge.central.datasets import DatasetArrays, DatasetStore, DatasetVersion
from fedge.central.jobs import prepare_job, register_job, run_job
from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.central.tokens import TokenStore
from fedge.central.train_config import parse_train_config
from fedge.cli.main import app
from fedge.data.canvases import FASHION_MNIST_CLASSES, CanvasConfig, fashion_mnist_canvases
from fedge.data.detection import ANNOTATIONS_FILE, write_coco
from fedge.errors import ConfigError, DataError
from fedge.models.spec import build_model, load_spec
from fedge.tasks import Detection
from fedge.tasks.responses import decode_detections

runner = CliRunner()
SIZE = 32
# Input 1×32×32 → output (10 + 4)×8×8: stride 4, as the centernet preset but tiny.
SPEC = json.loads((Path(__file__).parents[1] / "fixtures" / "tiny_centernet.json").read_text())


@pytest.fixture(scope="module")
def canvases():
    config = CanvasConfig(size=SIZE, max_items=2, max_scale=1.1)
    return fashion_mnist_canvases(24, 8, seed=3, config=config)


@pytest.fixture(scope="module")
def store(tmp_path_factory, canvases):
    """A store holding canvases@1 (train and test split) and the tiny spec's file."""
    root = tmp_path_factory.mktemp("detect") / "store"
    DatasetStore(LocalStore(root)).upload("canvases", DatasetArrays.from_detection(*canvases))
    (root.parent / "spec.json").write_text(json.dumps(SPEC))
    return root


def job_config(store, **train):
    settings = {"epochs": 1, "batch_size": 8, "lr": 0.01, "eval_batch_size": 4} | train
    return parse_train_config(
        {
            "name": "detect",
            "store": str(store),
            "dataset": {"name": "canvases"},
            "model": {"spec": str(store.parent / "spec.json")},
            "train": settings,
        }
    )


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """One epoch on canvases@1, registered as detector version 1 and promoted."""
    job = prepare_job(job_config(store))
    result = run_job(job, tmp_path_factory.mktemp("runs") / "job")
    registry = ModelRegistry(LocalStore(store))
    version = register_job(result, job, "detector", str(store))
    registry.promote("detector", version.version)
    return job, result, version


# --- dataset versions ----------------------------------------------------------------------


def test_a_detection_version_records_its_task_classes_and_boxes(store, canvases):
    datasets = DatasetStore(LocalStore(store))
    version = datasets.get("canvases")
    train, test = canvases
    assert (version.task, version.categories) == ("detection", list(train.categories))
    assert version.train.y_shape == list(train.y.shape) and version.num_test == len(test)
    counts = np.bincount(train.y[..., 0][train.y[..., 0] >= 0].long(), minlength=10)
    assert version.train.class_counts == counts.tolist()  # boxes per class
    back_train, back_test = datasets.load(version).to_detection()
    assert torch.equal(back_train.y, train.y) and torch.equal(back_test.x, test.x)
    # A manifest written before tasks existed reads as classification.
    old = version.model_dump(mode="json", exclude={"task", "categories"})
    assert DatasetVersion.model_validate(old).task == "classification"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([0, 10, 10, 40, 20], r"image 0 has box \[10.0, 10.0, 40.0, 20.0\] outside its 32x32"),
        ([0, -3, 10, 20, 20], "outside"),
        ([12, 1, 1, 5, 5], "unknown class 12"),
        ([0.5, 1, 1, 5, 5], "unknown class 0.5"),
        ([0, np.nan, 1, 5, 5], "NaN"),
    ],
)
def test_uploads_refuse_bad_boxes_and_write_nothing(tmp_path, canvases, row, message):
    train, _ = canvases
    y = train.y.numpy().copy()
    y[0, 0] = row
    arrays = DatasetArrays(
        train.x.numpy(), y, 10, task="detection", categories=tuple(train.categories)
    )
    datasets = DatasetStore(LocalStore(tmp_path / "store"))
    with pytest.raises(DataError, match=message):
        datasets.upload("bad", arrays)
    assert datasets.list_datasets() == []


def test_appending_canvases_pads_their_boxes(tmp_path, canvases):
    train, _ = canvases
    datasets = DatasetStore(LocalStore(tmp_path / "store"))
    datasets.upload("c", DatasetArrays.from_detection(train.subset([0, 1])))
    one = train.subset([2])
    one = type(one)(one.x, one.y[:, :1], one.categories)  # M = 1 against the parent's 2
    v2 = datasets.append("c", DatasetArrays.from_detection(one))
    merged, _ = datasets.load(v2).to_detection()
    assert merged.y.shape == (3, 2, 5) and merged.y[2, 1, 0] == -1
    assert torch.equal(merged.y[2, :1], train.y[2, :1])


def test_fedge_data_upload_makes_canvases(tmp_path):
    store = tmp_path / "store"
    sets = ["data.name=canvases", "data.num_train=6", "data.num_test=2", f"data.size={SIZE}"]
    args = ["data", "upload", "c", "--store", str(store)]
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    version = DatasetStore(LocalStore(store)).get("c")
    assert (version.task, version.num_test) == ("detection", 2)
    assert version.input_shape == [1, SIZE, SIZE]
    assert version.train.y_dtype == "float32" and version.categories[0] == "t-shirt/top"


def test_fedge_data_upload_reads_a_coco_folder_and_refuses_bad_boxes(tmp_path, canvases):
    train, test = canvases
    write_coco(train.subset(range(6)), tmp_path / "train")
    write_coco(test.subset(range(2)), tmp_path / "test")
    store = tmp_path / "store"
    sets = ["data.name=coco", f"data.annotations={tmp_path / 'train' / ANNOTATIONS_FILE}"]
    sets.append(f"data.test_annotations={tmp_path / 'test' / ANNOTATIONS_FILE}")
    args = ["data", "upload", "c", "--store", str(store)]
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    version = DatasetStore(LocalStore(store)).get("c")
    assert (version.task, version.num_train, version.num_test) == ("detection", 6, 2)
    loaded, _ = DatasetStore(LocalStore(store)).load(version).to_detection()
    torch.testing.assert_close(loaded.y, train.y[:6])
    # A box that overhangs the image: a clear error, and no new version.
    annotations = tmp_path / "train" / ANNOTATIONS_FILE
    doc = json.loads(annotations.read_text())
    doc["annotations"][0]["bbox"] = [20, 20, 30, 5]
    annotations.write_text(json.dumps(doc))
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code != 0 and "outside" in result.output
    assert DatasetStore(LocalStore(store)).version_numbers("c") == [1]


# --- training ------------------------------------------------------------------------------


def test_a_data_section_of_canvases_trains_the_centernet_preset(tmp_path):
    data = {"name": "canvases", "num_train": 8, "num_test": 4, "size": SIZE}
    config = {"data": data, "model": {"preset": "centernet"}, "train": {"batch_size": 4}}
    job = prepare_job(parse_train_config(config))
    assert job.the_task == Detection(10, (SIZE, SIZE), stride=4, categories=FASHION_MNIST_CLASSES)
    assert (job.x_train.shape, job.y_test.shape[0]) == ((8, 1, SIZE, SIZE), 4)
    config["model"] = {"preset": "lenet"}
    with pytest.raises(ConfigError, match=r"canvases is detection data: use model\.preset"):
        prepare_job(parse_train_config(config))
    # A [task] section must agree with the data; it sets the served defaults.
    config["model"] = {"preset": "centernet"}
    config["task"] = {"kind": "detection", "score_threshold": 0.5, "max_detections": 7}
    task = prepare_job(parse_train_config(config)).the_task
    assert (task.score_threshold, task.max_detections) == (0.5, 7)
    config["task"] = {"kind": "classification"}
    with pytest.raises(ConfigError, match="kind is classification, but canvases holds detection"):
        prepare_job(parse_train_config(config))
    # And the other way round: the detector preset refuses class labels.
    labels = {"data": {"name": "digits"}, "model": {"preset": "centernet"}}
    with pytest.raises(ConfigError, match="centernet preset is a detector"):
        prepare_job(parse_train_config(labels))


def test_fedge_train_reports_map(store, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "d"\nstore = "{store}"\n[dataset]\nname = "canvases"\n'
        f'[model]\nspec = "{store.parent / "spec.json"}"\n[train]\nbatch_size = 8\n'
    )
    result = runner.invoke(app, ["train", str(job), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "test mAP@.5" in result.output and "mAP@[.5:.95]" in result.output


def test_a_detection_job_records_map_per_epoch_and_its_task(trained):
    job, result, version = trained
    assert job.the_task == Detection(10, (SIZE, SIZE), stride=4, categories=FASHION_MNIST_CLASSES)
    history = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert {"test_loss", "test_map", "test_map50"} <= set(history[0])
    assert "test_accuracy" not in history[0]
    summary = result.summary
    assert summary["final_test_map50"] == history[-1]["test_map50"]
    assert summary["best_test_map50"] == max(m["test_map50"] for m in history)
    assert summary["task"] == job.the_task.to_dict()
    assert np.isfinite(summary["final_train_loss"])
    # The registry records the task and the mAP.
    assert version.task == job.the_task.to_dict() and version.task_kind == "detection"
    assert version.metrics["final_test_map50"] == summary["final_test_map50"]
    assert version.data_version == "canvases@1"


def test_the_detector_starts_from_the_tasks_heatmap_prior(store, tmp_path):
    """With a negligible learning rate the final heatmap biases are still the prior."""
    job = prepare_job(job_config(store, lr=1e-9))
    result = run_job(job, tmp_path / "job")
    bias = result.params[f"{job.spec.layer_names()[-1]}.bias"]
    assert bias[:10] == pytest.approx(np.full(10, np.log(0.1 / 0.9)), abs=1e-4)


def test_data_parallel_detection_matches_one_process(store, tmp_path):
    """The ranks' loss sums over the global batch give one process's gradients, even
    when the shards differ in size (batches of 5 split 3 + 2)."""
    job = prepare_job(job_config(store, batch_size=5, epochs=1))
    one = run_job(job, tmp_path / "one")
    two = run_job(job, tmp_path / "two", workers=2)
    for name, value in one.params.items():
        torch.testing.assert_close(two.params[name], value, rtol=1e-4, atol=1e-5)
    assert two.summary["final_test_map50"] == pytest.approx(one.summary["final_test_map50"])


# --- export --------------------------------------------------------------------------------


def decoded_pairs(rows_a, rows_b):
    """Rows of two decodings, each sorted the same way (class, corners, then score)."""

    def ordered(rows):
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        keys = np.round(rows[:, [1, 5, 4, 3, 2, 0]], 3).T
        return rows[np.lexsort(keys)]

    return ordered(rows_a), ordered(rows_b)


def onnx_outputs(store, version, x):
    onnx = ModelRegistry(LocalStore(store)).read_file(version, "model.onnx")
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_onnx_export_gives_pytorchs_detections(store, trained, canvases):
    job, result, version = trained
    task = job.the_task
    x = canvases[1].x[:4].numpy()
    model = build_model(load_spec(version.spec))
    model.load_state_dict(result.params, strict=False)
    model.eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(x))
    # Every peak (10 classes × 8×8 cells < 1000): no tie at a cut-off decides what is kept.
    torch_rows = task.decode(outputs, score_threshold=0.0, max_detections=1000)
    onnx_rows = decode_detections(
        onnx_outputs(store, version, x),
        num_classes=10,
        image_size=(SIZE, SIZE),
        score_threshold=0.0,
        max_detections=1000,
    )
    for t, o in zip(torch_rows, onnx_rows, strict=True):
        assert len(t) == len(o) > 10
        a, b = decoded_pairs(t.numpy(), o)
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
        np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-4)


# --- serving -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(store, trained, tmp_path_factory, serve_process):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with serve_process(store, "--max-delay-ms", 20, log=log) as url:
        yield url


def test_predict_answers_the_documented_detection_rows(url, store, trained, canvases):
    _, _, version = trained
    x = canvases[1].x[:3].numpy()
    body = {"instances": x.tolist(), "score_threshold": 0.05, "max_detections": 5}
    answer = httpx.post(f"{url}/predict", json=body, timeout=30).json()
    assert (answer["model"], answer["version"]) == ("detector", 1)
    assert set(answer) == {"prediction", "model", "version"}
    expected = decode_detections(
        onnx_outputs(store, version, x),
        num_classes=10,
        image_size=(SIZE, SIZE),
        score_threshold=0.05,
        max_detections=5,
    )
    assert len(answer["prediction"]) == 3
    for rows, want in zip(answer["prediction"], expected, strict=True):
        assert len(rows) == len(want) <= 5
        for row in rows:
            assert len(row) == 6 and isinstance(row[0], int) and 0 <= row[0] < 10
            assert all(0 <= v <= 1 for v in row[2:]) and row[1] >= 0.05
        np.testing.assert_allclose(np.asarray(rows).reshape(-1, 6), want, atol=1e-5)
    # Without options: the task's defaults, recorded with the model.
    plain = httpx.post(f"{url}/predict", json={"instances": x.tolist()}).json()["prediction"]
    defaults = decode_detections(
        onnx_outputs(store, version, x), num_classes=10, image_size=(SIZE, SIZE),
        score_threshold=version.task["score_threshold"],
        max_detections=version.task["max_detections"],
    )  # fmt: skip
    assert [len(rows) for rows in plain] == [len(rows) for rows in defaults]
    # The query string sets the options too; the body wins over it.
    strict = httpx.post(
        f"{url}/predict?score_threshold=0.99&max_detections=2", json={"instances": x.tolist()}
    ).json()
    assert all(len(rows) <= 2 and all(r[1] >= 0.99 for r in rows) for rows in strict["prediction"])
    loose = httpx.post(
        f"{url}/predict?max_detections=2&score_threshold=0.05",
        json={"instances": x[:1].tolist(), "max_detections": 3},
    ).json()
    np.testing.assert_allclose(np.asarray(loose["prediction"][0]), expected[0][:3], atol=1e-5)


@pytest.mark.parametrize(
    ("where", "options", "message"),
    [
        ("body", {"score_threshold": 1.5}, r"score_threshold must lie in \[0, 1\]"),
        ("body", {"score_threshold": -0.1}, r"score_threshold must lie in \[0, 1\]"),
        ("body", {"max_detections": 0}, r"max_detections must be an integer in \[1, 1000\]"),
        ("body", {"max_detections": 1001}, r"\[1, 1000\]"),
        ("body", {"max_detections": 2.5}, r"\[1, 1000\]"),
        ("body", {"score_threshold": "high"}, "score_threshold must be a number"),
        ("query", {"score_threshold": "x"}, "score_threshold must be a number"),
        ("query", {"max_detections": "5000"}, r"\[1, 1000\]"),
        # Non-finite numbers reach here through the standard library's JSON parser.
        ("raw", '"max_detections": NaN', "max_detections must be a finite number"),
        ("raw", '"max_detections": 1e999', "max_detections must be a finite number"),
        ("raw", '"score_threshold": -Infinity', "score_threshold must be a finite number"),
    ],
)
def test_predict_refuses_bad_detection_options(url, canvases, where, options, message):
    body = {"instances": canvases[1].x[:1].numpy().tolist()}
    if where == "raw":
        content = json.dumps(body)[:-1] + ", " + options + "}"
        r = httpx.post(f"{url}/predict", content=content)
    elif where == "body":
        r = httpx.post(f"{url}/predict", json=body | options)
    else:
        r = httpx.post(f"{url}/predict", json=body, params=options)
    assert r.status_code == 400, r.text
    assert re.search(message, r.json()["error"])


def test_concurrent_predictions_are_batched_and_decoded_per_request(url, store, trained, canvases):
    _, _, version = trained
    x = canvases[0].x[:16].numpy()
    expected = decode_detections(
        onnx_outputs(store, version, x), num_classes=10, image_size=(SIZE, SIZE),
        score_threshold=0.01, max_detections=4,
    )  # fmt: skip

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/predict",
                        json={
                            "instances": x[i : i + 1].tolist(),
                            "score_threshold": 0.01,
                            "max_detections": 4,
                        },
                    )
                    for i in range(16)
                )
            )

    shared = 0
    for _ in range(3):  # on a loaded machine a burst may trickle in one by one
        responses = asyncio.run(burst())
        for r, want in zip(responses, expected, strict=True):
            rows = np.asarray(r.json()["prediction"][0]).reshape(-1, 6)
            np.testing.assert_allclose(rows, want, atol=1e-5)
        shared = max(int(r.headers["X-Batch-Rows"]) for r in responses)
        if shared > 1:
            break
    assert shared > 1  # some requests shared an onnxruntime call


def test_v2_infer_returns_the_output_map_and_detections(url, store, trained, canvases):
    _, _, version = trained
    x = canvases[1].x[:2].numpy()
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    body = {"inputs": [tensor], "parameters": {"score_threshold": 0.05, "max_detections": 3}}
    answer = httpx.post(f"{url}/v2/models/detector/infer", json=body).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"output", "detections"}
    raw = onnx_outputs(store, version, x)
    assert outputs["output"]["shape"] == [2, 14, 8, 8]
    np.testing.assert_allclose(np.reshape(outputs["output"]["data"], raw.shape), raw, atol=1e-5)
    rows = np.reshape(outputs["detections"]["data"], outputs["detections"]["shape"])
    expected = decode_detections(
        raw, num_classes=10, image_size=(SIZE, SIZE), score_threshold=0.05, max_detections=3
    )
    want = np.concatenate([np.c_[np.full(len(r), i), r] for i, r in enumerate(expected)])
    np.testing.assert_allclose(rows.reshape(-1, 7), want, atol=1e-5)
    meta = httpx.get(f"{url}/v2/models/detector").json()
    assert [o["name"] for o in meta["outputs"]] == ["output", "detections"]
    wrong = httpx.post(
        f"{url}/v2/models/detector/infer", json={"inputs": [tensor], "outputs": [{"name": "label"}]}
    )
    assert wrong.status_code == 400 and "outputs are output, detections" in wrong.json()["error"]
    # The download bundle says what the model does, for the device.
    bundle = zipfile.ZipFile(io.BytesIO(httpx.get(f"{url}/v2/models/detector/download").content))
    assert json.loads(bundle.read("version.json"))["task"] == version.task


def test_sample_uploads_to_a_detector_are_refused(url, store, canvases):
    token = TokenStore(LocalStore(store)).create(["*"])
    body = {"instances": canvases[1].x[:1].numpy().tolist(), "labels": [0]}
    r = httpx.post(
        f"{url}/v2/models/detector/samples", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 400 and "is a detector" in r.json()["error"]
    assert DatasetStore(LocalStore(store)).version_numbers("canvases") == [1]
