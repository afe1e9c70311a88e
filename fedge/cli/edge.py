"""``fedge edge``: the edge app on a device: download, predict locally, send samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedge.cli.common import console, friendly
from fedge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedge.central.edge import Detections

edge_app = typer.Typer(
    help="The edge app: keep a frozen model on this device (onnxruntime only, no torch), "
    "update it over the air, predict locally, send labelled samples to the cloud.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(help="Model name on the server.")]
ServerOption = Annotated[
    str,
    typer.Option(envvar="FEDGE_SERVER", help="URL of the `fedge serve` server."),
]
CacheOption = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDGE_EDGE_CACHE",
        help="Folder for downloaded models (default ~/.cache/fedge/edge).",
        show_default=False,
    ),
]

TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="FEDGE_TOKEN",
        help="API token (fedge tokens create): needed to send samples.",
        show_default=False,
    ),
]

PublisherOption = Annotated[
    str | None,
    typer.Option(
        envvar="FEDGE_PUBLISHER_KEY",
        help="The publisher's public key (fedge models keygen): install and run only "
        "versions it signed.",
        show_default=False,
    ),
]


def _app(
    model: str,
    server: str | None,
    cache: Path | None,
    token: str | None = None,
    publisher_key: str | None = None,
) -> Any:
    from fedge.central.edge import EdgeApp

    return EdgeApp(model, server, cache, token=token, publisher_key=publisher_key)


@edge_app.command("update")
@friendly
def edge_update(
    model: ModelArg,
    server: ServerOption = "http://127.0.0.1:8000",
    cache: CacheOption = None,
    token: TokenOption = None,
    publisher_key: PublisherOption = None,
) -> None:
    """Download the model's served version unless this device has it already (ETag), intact.

    A download replaces the version in use only once its files match their hashes and it
    loads in onnxruntime; a cached copy changed on this device is downloaded again.
    """
    result = _app(model, server, cache, token, publisher_key).update()
    m = result.model
    if result.changed:
        again = " again: the cached copy had changed on this device" if result.repaired else ""
        console.print(f"{model}: downloaded version {m.version} (sha256 {m.sha256[:12]}){again}")
    else:
        console.print(f"{model}: version {m.version} is up to date")


@edge_app.command("predict")
@friendly
def edge_predict(
    model: ModelArg,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help='Examples: .json ({"instances": [...]}), .npy, .npz (x), or image files '
            "(.png, .jpg: 8-bit grayscale or RGB of the model's input size, scaled to [0, 1] "
            "as training images are). Several files are run one after another.",
            show_default=False,
        ),
    ],
    update: Annotated[bool, typer.Option(help="Check the server for a new version first.")] = False,
    probabilities: Annotated[
        bool, typer.Option(help="Classifiers: also print probabilities.")
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Detectors: print one JSON object, /predict's answer, instead of text "
            "(a classifier's answer is always JSON).",
        ),
    ] = False,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            help="Detectors: lowest score kept, 0 to 1 (default: the model's, else 0.3).",
            show_default=False,
        ),
    ] = None,
    max_detections: Annotated[
        int | None,
        typer.Option(
            help="Detectors: most boxes per image (default: the model's, else 100).",
            show_default=False,
        ),
    ] = None,
    draw: Annotated[
        Path | None,
        typer.Option(
            help="Detectors: write each image with its boxes drawn as a PNG. PATH ending in "
            ".png takes one image; any other PATH is a folder (made if missing) that gets "
            "NAME.png per image file and NAME-I.png per example I of an array file.",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        bool, typer.Option(help="With --draw: write class and score above each box.")
    ] = True,
    server: ServerOption = "http://127.0.0.1:8000",
    cache: CacheOption = None,
    token: TokenOption = None,
    publisher_key: PublisherOption = None,
) -> None:
    """Run the cached model on examples, locally.

    A classifier prints one JSON object (classes, and probabilities if asked). A detector
    prints, per image, its boxes: class (its name when the model records names), score,
    and corners in pixels; --json prints the same rows as `fedge serve`'s /predict
    (corners in [0, 1]) and --draw writes the images with their boxes.
    """
    from fedge.central.edge import Detections, load_inputs
    from fedge.central.edge_images import IMAGE_SUFFIXES, check_image

    batches = [(path, load_inputs(path)) for path in inputs]
    app = _app(model, server, cache, token, publisher_key)
    if update:
        app.update()
    detector = app.task().get("kind") == "detection"
    if not detector:
        asked = [
            name
            for name, value in (
                ("--score-threshold", score_threshold),
                ("--max-detections", max_detections),
                ("--draw", draw),
            )
            if value is not None
        ]
        if asked:
            raise ConfigError(f"{', '.join(asked)}: for detection models only; {model} classifies")
    elif probabilities:
        raise ConfigError(f"--probabilities: for classifiers only; {model} detects objects")
    shape = app.input_shape()
    for path, x in batches:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            check_image(path, x[0], shape)
    targets = [] if draw is None else _draw_targets(draw, batches)
    results = [
        app.predict(x, score_threshold=score_threshold, max_detections=max_detections)
        if detector
        else app.predict(x)
        for _, x in batches
    ]
    if not detector:
        answer: dict[str, Any] = {
            "model": results[0].model,
            "version": results[0].version,
            "prediction": [label for r in results for label in r.labels.tolist()],
        }
        if probabilities:
            answer["probabilities"] = [p for r in results for p in r.probabilities.tolist()]
        print(json.dumps(answer))
        return
    found = [r for r in results if isinstance(r, Detections)]
    if json_output:
        rows = [image for r in found for image in r.prediction()]
        print(json.dumps({"prediction": rows, "model": model, "version": found[0].version}))
    else:
        _print_detections(batches, found)
    if draw is not None:
        _draw(batches, found, shape, targets, labels)
        # On stderr after JSON, which stays alone on stdout.
        typer.echo(
            f"drew {len(targets)} image{'s' * (len(targets) != 1)} to {draw}", err=json_output
        )


def _image_names(path: Path, x: Any) -> list[str]:
    """How the examples of one input file are called: the image file's name, or
    ``NAME[i]`` for the rows of an array file."""
    from fedge.central.edge_images import IMAGE_SUFFIXES

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path.name]
    return [f"{path.name}[{i}]" for i in range(len(x))]


def _draw_targets(draw: Path, batches: list[tuple[Path, Any]]) -> list[Path]:
    """The PNG file of every example, in order (see ``--draw``); a :class:`ConfigError`
    before anything runs if they cannot be told apart."""
    from fedge.central.edge_images import IMAGE_SUFFIXES

    count = sum(len(x) for _, x in batches)
    if draw.suffix.lower() == ".png":
        if count != 1:
            raise ConfigError(
                f"--draw {draw} writes one image, but the inputs hold {count}: give a folder"
            )
        return [draw]
    targets = []
    for path, x in batches:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            targets.append(draw / f"{path.stem}.png")
        else:
            targets += [draw / f"{path.stem}-{i}.png" for i in range(len(x))]
    clash = next((t for i, t in enumerate(targets) if t in targets[:i]), None)
    if clash is not None:
        raise ConfigError(f"--draw: two inputs would both be drawn to {clash}; rename one")
    return targets


def _print_detections(batches: list[tuple[Path, Any]], found: list[Detections]) -> None:
    """Per image its boxes: class name, score, corners in pixels."""
    first = found[0]
    print(
        f"{first.model} version {first.version}: score >= {first.score_threshold:g}, "
        f"at most {first.max_detections} per image"
    )
    height, width = first.image_size
    names = [first.class_name(int(row[0])) for r in found for rows in r.rows for row in rows]
    pad = max(map(len, names), default=0)
    for (path, x), result in zip(batches, found, strict=True):
        for name, rows in zip(_image_names(path, x), result.rows, strict=True):
            print(f"{name}: {len(rows)} detection{'s' * (len(rows) != 1)}")
            for row in rows:
                x0, y0, x1, y1 = row[2] * width, row[3] * height, row[4] * width, row[5] * height
                print(
                    f"  {result.class_name(int(row[0])):<{pad}}  {row[1]:.2f}  "
                    f"({x0:.1f}, {y0:.1f})-({x1:.1f}, {y1:.1f}) px"
                )


def _draw(
    batches: list[tuple[Path, Any]],
    found: list[Detections],
    shape: tuple[int, ...],
    targets: list[Path],
    labels: bool,
) -> None:
    """Write every example with its boxes drawn to its PNG file in ``targets``."""
    from fedge.central.edge_images import draw_detections

    images = [
        (image, rows)
        for (_, x), result in zip(batches, found, strict=True)
        for image, rows in zip(x.reshape(len(x), *shape), result.rows, strict=True)
    ]
    for (image, rows), target in zip(images, targets, strict=True):
        picture = draw_detections(image, rows, names=found[0].categories, labels=labels)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target, format="PNG")
        except OSError as exc:
            raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None


@edge_app.command("send")
@friendly
def edge_send(
    model: ModelArg,
    samples: Annotated[
        Path,
        typer.Argument(help='Labelled examples: .json ({"instances", "labels"}) or .npz (x, y).'),
    ],
    server: ServerOption = "http://127.0.0.1:8000",
    cache: CacheOption = None,
    token: TokenOption = None,
) -> None:
    """Send labelled examples to the server; they become a new version of its dataset."""
    from fedge.central.edge import load_samples

    x, y = load_samples(samples)
    answer = _app(model, server, cache, token).send(x, y)
    console.print(
        f"sent {answer['samples']} samples: dataset {answer['dataset']} version "
        f"{answer['version']} ({answer['total']} examples)",
        markup=False,
    )
