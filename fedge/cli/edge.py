"""``fedge edge``: the edge app on a device: download, predict locally, send samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge.cli.common import console, friendly

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
        Path, typer.Argument(help='Examples: .json ({"instances": [...]}), .npy, or .npz (x).')
    ],
    update: Annotated[bool, typer.Option(help="Check the server for a new version first.")] = False,
    probabilities: Annotated[bool, typer.Option(help="Also print probabilities.")] = False,
    server: ServerOption = "http://127.0.0.1:8000",
    cache: CacheOption = None,
    token: TokenOption = None,
    publisher_key: PublisherOption = None,
) -> None:
    """Classify examples with the cached model, locally; prints one JSON object."""
    from fedge.central.edge import load_inputs

    app = _app(model, server, cache, token, publisher_key)
    if update:
        app.update()
    result = app.predict(load_inputs(inputs))
    answer: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "prediction": result.labels.tolist(),
    }
    if probabilities:
        answer["probabilities"] = result.probabilities.tolist()
    print(json.dumps(answer))


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
