"""``fedge server`` and ``fedge client``: federated learning over the network.

``fedge client`` is the *training* client of a federation; ``fedge edge`` is something
else: the inference app that runs a served model on a device.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from fedge.cli.common import SetOption, console, err_console, friendly
from fedge.errors import ConfigError


@friendly
def server(
    config: Annotated[
        Path,
        typer.Argument(help="Experiment file (TOML); its deploy section configures the server."),
    ],
    overrides: SetOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed).")] = 8080,
    state: Annotated[
        Path, typer.Option(help="State folder (SQLite + tensors); a restart resumes from it.")
    ] = Path("fedge-server"),
    tls_cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    allow_http: Annotated[
        bool, typer.Option(help="Allow plain HTTP on a non-loopback address (behind a TLS proxy).")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run a federation: devices enroll, check in, train and upload; rounds are aggregated
    with the experiment's strategy. Dashboard at /, protocol at /openapi.json.

    The enrollment secret comes from $FEDGE_ENROLLMENT_SECRET or deploy.enrollment_secret.
    """
    from fedge.config import load_config
    from fedge.federation.app import check_transport, run_federation_server
    from fedge.federation.server import FederationServer

    check_transport(host, tls_cert, tls_key, allow_http=allow_http)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(config, overrides or [])
    with console.status("loading the experiment and the server state", spinner="dots"):
        fed = FederationServer(cfg, state)
    r = fed.coordinator.round
    console.print(
        f"[bold]{cfg.name}[/]: {fed.strategy.name}, model {fed.spec.name}, "
        f"{fed.policy.target} updates per round from {fed.policy.selected} tasks, "
        f"model version {fed.coordinator.state.rounds_completed} of {cfg.rounds}"
        + (f", round {r.number} open" if r is not None else ", finished"),
        soft_wrap=True,
    )

    def listening(url: str) -> None:
        console.print(f"fedge server: listening on {url}", soft_wrap=True, markup=False)

    try:
        run_federation_server(
            fed,
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            allow_http=allow_http,
            access_log=access_log,
            on_listen=listening,
        )
    finally:
        fed.close()


@friendly
def client(
    server: Annotated[str, typer.Option("--server", help="Server URL, e.g. https://host:8443.")],
    data: Annotated[
        Path | None, typer.Option(help="The device's data: .npz with arrays x and y.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Demo data: an experiment file whose data to split.")
    ] = None,
    partition: Annotated[
        int | None, typer.Option(help="Demo data: which client of the config's partition.")
    ] = None,
    overrides: SetOption = None,
    state: Annotated[
        Path | None,
        typer.Option(help="The device's folder (identity, strategy state); default per data."),
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="Enrollment secret (default $FEDGE_ENROLLMENT_SECRET).")
    ] = None,
    rng_id: Annotated[
        int | None, typer.Option(help="Random stream id (default: the partition index, or 0).")
    ] = None,
    max_updates: Annotated[
        int | None, typer.Option(help="Stop after this many accepted updates.")
    ] = None,
    ca_cert: Annotated[
        str | None, typer.Option(help="CA bundle to verify the server's certificate.")
    ] = None,
    max_backoff: Annotated[
        float, typer.Option(help="Longest wait in seconds between retries of a failed request.")
    ] = 30.0,
    require: Annotated[
        list[str] | None,
        typer.Option(
            help="Refuse rounds without this protection (repeatable): secure-aggregation "
            "(the server sees only a sum), noise (DP noise added on the device)."
        ),
    ] = None,
    min_noise: Annotated[
        float,
        typer.Option(
            help="Refuse rounds in which this device adds less DP noise than this many times "
            "its update's sensitivity (local DP's z; under distributed DP its own share)."
        ),
    ] = 0.0,
    quiet: Annotated[bool, typer.Option(help="Print nothing but errors.")] = False,
) -> None:
    """Train with a federation on this device's own data until the experiment finishes.

    (Not the inference app: that is `fedge edge`.)
    """
    from fedge.federation.client import ClientSettings, FederatedClient

    x, y, default_state = _device_data(data, config, partition, overrides or [])
    settings = ClientSettings(
        max_updates=max_updates,
        verify=ca_cert or True,
        max_backoff=max_backoff,
        require=tuple(require or ()),
        min_noise=min_noise,
    )

    def log(message: str) -> None:
        if not quiet:
            console.print(f"fedge client: {message}", soft_wrap=True, markup=False)

    device = FederatedClient(
        server,
        state or default_state,
        x,
        y,
        rng_id=rng_id if rng_id is not None else (partition or 0),
        secret=secret or os.environ.get("FEDGE_ENROLLMENT_SECRET"),
        settings=settings,
        log=log,
    )
    try:
        accepted = device.run()
    finally:
        device.close()
    if not quiet:
        err_console.print(f"fedge client: {accepted} updates accepted", markup=False)


def _device_data(data, config, partition, overrides):  # type: ignore[no-untyped-def]
    """``(x, y, default state folder)`` from ``--data`` or ``--config/--partition``."""
    if (data is None) == (config is None):
        raise ConfigError("give the device's data: --data FILE.npz, or --config and --partition")
    if data is not None:
        import torch

        from fedge.central.dataset_arrays import check_split, read_npz

        arrays = read_npz(data)
        x, y = check_split(arrays.x, arrays.y, arrays.num_classes, str(data))
        features = torch.from_numpy(x)
        if features.is_floating_point():
            features = features.float()
        return features, torch.from_numpy(y), data.with_suffix(".fedge-client")
    if partition is None:
        raise ConfigError("--config needs --partition K: which client's share to train on")
    from fedge.config import load_config
    from fedge.data.load import load_data, partition_data

    cfg = load_config(config, overrides)
    dataset = load_data(cfg.data, seed=cfg.seed)
    parts = partition_data(dataset, cfg.partition, seed=cfg.seed)
    if not 0 <= partition < len(parts):
        raise ConfigError(f"--partition must be in [0, {len(parts) - 1}], got {partition}")
    rows = parts[partition]
    return dataset.train.x[rows], dataset.train.y[rows], Path(f"fedge-client-{partition}")
