"""The Python federated-learning client: a device that trains on its own data.

(Not to be confused with ``fedge edge``, the inference app that runs a served model on a
device.) :class:`FederatedClient` enrolls once, then loops: check in → download the
model (cached by ETag) → local training with the same :func:`~fedge.fl.local.train_client`
and strategy client half as the simulation → upload, until the server says the
experiment is finished.

It survives a server that is down or restarting (retries with exponential backoff and
jitter) and its own restarts: its identity, its strategy state (SCAFFOLD's c_i) and an
update not yet acknowledged live in its state folder. An update is uploaded with an
idempotency key chosen before the first try, so a retry after a lost answer is counted
once. The strategy state advances only when the server has acknowledged the update that
produced it; a device that loses it starts again from zero, which the strategies allow.

In a round with secure aggregation (the task carries a SecAgg+ plan) the device never
uploads its update: it quantizes its contribution and takes part in the protocol's stages
(:mod:`fedge.privacy.secagg`), asking the server for each stage's input and posting its
answer; its strategy state advances when the round closes with its masked input summed.
Its protocol secrets live in memory only: a device that restarts mid-round has dropped out
of it. For fault-injection tests, ``$FEDGE_SECAGG_CRASH_AT=<stage>`` makes the process
SIGKILL itself just before it would post that stage's message.

With local DP (the task carries ``local_dp``) the device clips its delta and adds Gaussian
noise from its own entropy before the update is even written to its state folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from fedge import __version__
from fedge.config import StrategyConfig
from fedge.errors import ConfigError, FedgeError, ProtocolError, Unauthorized
from fedge.federation.protocol import Task
from fedge.federation.wire import decode_model, encode_model, encode_update
from fedge.fl.local import LocalTraining, client_generator, train_client
from fedge.fl.strategy import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params
from fedge.models.spec import build_model, fast_layout, load_spec
from fedge.privacy.local import device_normal, privatize
from fedge.privacy.secagg import (
    RoundPlan,
    SecAggAborted,
    SecAggClient,
    SkellamCodec,
    contribution,
)
from fedge.privacy.secagg.crypto import SecAggRefused
from fedge.privacy.secagg.messages import (
    keys_to_json,
    neighbours_from_json,
    sealed_from_json,
    sealed_to_json,
    shares_to_json,
    view_from_json,
)
from fedge.sim.build import make_strategy

__all__ = [
    "REQUIREMENTS",
    "ClientSettings",
    "FederatedClient",
    "PrivacyRefused",
    "own_noise",
    "parse_plan",
    "parse_task",
    "unmet_requirements",
]

_STRATEGY = TypeAdapter(StrategyConfig)
_RETRYABLE = {429, 500, 502, 503, 504, 507}


@dataclass(frozen=True)
class ClientSettings:
    """How a client behaves on the network.

    Parameters
    ----------
    backoff, max_backoff:
        First and largest wait in seconds between retries of a failed request (doubled
        each time, with jitter).
    timeout:
        Seconds before a request is given up (and retried).
    long_poll:
        Seconds the server may hold a check-in until a new round opens, instead of
        answering "wait" at once (0: never).
    max_updates:
        Stop after this many accepted updates (default: run until finished).
    verify:
        TLS verification: ``True``, ``False`` (tests only) or a CA bundle path.
    require:
        What this device's owner demands of every round before the device trains
        (:data:`REQUIREMENTS`): ``"secure-aggregation"`` (the server only ever sees a sum of
        masked updates) and ``"noise"`` (the device's update carries differential-privacy
        noise before the server sees it: local DP, or distributed DP under secure
        aggregation; central DP does not count, the server adds that noise itself). A round
        that does not meet them stops the device with a :class:`PrivacyRefused`.
    min_noise:
        The least noise the device must add itself, as a multiple of its update's
        sensitivity (:func:`own_noise`); 0: no minimum.
    """

    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 60.0
    long_poll: float = 10.0
    max_updates: int | None = None
    verify: bool | str = True
    require: tuple[str, ...] = ()
    min_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_noise) and self.min_noise >= 0):
            raise ConfigError(f"--min-noise must be a number >= 0, got {self.min_noise}")
        unknown = sorted(set(self.require) - set(REQUIREMENTS))
        if unknown:
            raise ConfigError(
                f"unknown requirement {', '.join(unknown)}: choose from {', '.join(REQUIREMENTS)}"
            )


#: What a device may require of the rounds it trains in (``--require``).
REQUIREMENTS = ("secure-aggregation", "noise")


class PrivacyRefused(ProtocolError):
    """The server asks this device to train in a round that lacks a protection its owner
    requires (``--require``); the device trains nothing and sends nothing."""


def own_noise(task: Task) -> float:
    """The standard deviation of the noise this device itself adds in ``task``'s round,
    relative to its update's sensitivity: local DP's z; under distributed DP √μᵢ/B, its
    Skellam noise against its rounded norm bound (which holds even if every other device
    colludes with the server); 0 when it adds none."""
    if task.local_dp is not None:
        return task.local_dp.noise_multiplier
    dp = (task.secure_aggregation or {}).get("distributed_dp")
    if isinstance(dp, dict):
        try:
            return math.sqrt(float(dp["client_variance"])) / float(dp["norm_bound"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return 0.0  # a malformed plan is refused with its reason (parse_plan)
    return 0.0


def unmet_requirements(task: Task, require: tuple[str, ...], min_noise: float = 0.0) -> list[str]:
    """What ``task``'s round lacks of ``require`` and ``min_noise``, in words (empty: the
    round meets them)."""
    plan = task.secure_aggregation
    missing = []
    if "secure-aggregation" in require and plan is None:
        missing.append("secure aggregation (the server would see this device's update)")
    noise = own_noise(task)
    if "noise" in require and noise == 0:
        missing.append(
            "noise added on the device (local DP, or distributed DP under secure aggregation)"
        )
    if min_noise > 0 and noise < min_noise:
        missing.append(
            f"noise of at least {min_noise:g} times the update's sensitivity added on the "
            f"device (it would add {noise:.3g})"
        )
    return missing


class FederatedClient:
    """A device of a federation.

    Parameters
    ----------
    server:
        The server's base URL, e.g. ``https://fl.example.org:8443``.
    state_dir:
        The device's own folder: identity, strategy state, pending upload.
    x, y:
        The device's training examples and labels.
    rng_id:
        Which random stream the device trains with (:func:`client_generator`); with a
        named partition of a dataset it is the partition index, so that a deployment
        reproduces a simulation.
    secret:
        The enrollment secret (needed until the device has enrolled).
    """

    def __init__(
        self,
        server: str,
        state_dir: Path,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        rng_id: int = 0,
        secret: str | None = None,
        kind: str = "python",
        settings: ClientSettings | None = None,
        log: Callable[[str], None] = print,
    ):
        if len(x) != len(y) or len(y) == 0:
            raise ConfigError(f"the device needs examples: got {len(x)} inputs, {len(y)} labels")
        self.server = server.rstrip("/")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.x, self.y = x, y
        self.rng_id = rng_id
        self.secret = secret
        self.kind = kind
        self.settings = settings or ClientSettings()
        self.log = log
        verify = self.settings.verify
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self.http = httpx.Client(base_url=self.server, timeout=self.settings.timeout, verify=verify)
        self._model_cache: tuple[str, bytes] | None = None
        self._model: tuple[str, torch.nn.Module] | None = None
        self._identity_cache: dict[str, str] | None = None
        self.accepted = 0

    # --- files of the state folder ------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.state_dir / name

    def _write(self, name: str, data: bytes) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half."""
        tmp = self._path(f".{name}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(name))

    def _identity(self) -> dict[str, str]:
        path = self._path("device.json")
        if path.exists():
            identity = json.loads(path.read_text())
            if identity.get("server") == self.server:
                return identity
            self.log(f"the state folder belongs to {identity.get('server')}: enrolling anew")
        return self._enroll()

    def _enroll(self) -> dict[str, str]:
        if not self.secret:
            raise ConfigError(
                "this device has not enrolled yet: give the enrollment secret "
                "(--secret or $FEDGE_ENROLLMENT_SECRET)"
            )
        body = self._request("POST", "/v1/devices", json={"secret": self.secret, "kind": self.kind})
        identity = {"server": self.server, **body.json()}
        self._write("device.json", json.dumps(identity).encode())
        for stale in ("client_state.safetensors", "pending.json", "pending.safetensors"):
            self._path(stale).unlink(missing_ok=True)
        self.log(f"enrolled as device {identity['device_id']}")
        return identity

    def _client_state(self) -> dict[str, Params] | None:
        path = self._path("client_state.safetensors")
        if not path.exists():
            return None
        return decode_model(path.read_bytes())[2]

    # --- HTTP with retries --------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request until it gets an answer that is not a server or network failure;
        raise :class:`ProtocolError` for a 4xx other than 304/409."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRYABLE:
                    if response.status_code == 401:
                        raise Unauthorized(_error_text(response))
                    if response.status_code >= 400 and response.status_code != 409:
                        raise ProtocolError(
                            f"{method} {url}: {response.status_code} {_error_text(response)}"
                        )
                    return response
                reason = f"{response.status_code} {_error_text(response)}"
            delay = min(self.settings.max_backoff, self.settings.backoff * 2**attempt)
            delay = random.uniform(delay / 2, delay)
            attempt += 1
            self.log(f"{method} {url} failed ({reason}); retrying in {delay:.1f} s")
            time.sleep(delay)

    def _authorized(self, identity: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {identity['token']}"}

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Take part until the experiment finishes (or ``max_updates``); returns the
        number of this device's updates the server accepted."""
        while self.settings.max_updates is None or self.accepted < self.settings.max_updates:
            status, wait = self.step()
            if status == "finished":
                break
            time.sleep(wait)
        return self.accepted

    def step(self) -> tuple[str, float]:
        """One turn of the loop: upload a pending update, or check in and act on the
        answer. Returns ``(status, seconds to wait before the next turn)``, the status
        being ``"uploaded"``, ``"trained"``, ``"wait"`` or ``"finished"``."""
        if self._identity_cache is None:
            self._identity_cache = self._identity()
        identity = self._identity_cache
        try:
            if self._path("pending.json").exists():
                self._upload_pending(identity)
                return "uploaded", 0.0
            answer = self._request(
                "POST",
                "/v1/checkin",
                params={"wait": self.settings.long_poll},
                headers=self._authorized(identity),
            )
        except Unauthorized as exc:
            if not self.secret:
                raise
            self.log(f"the server does not know this device ({exc}): enrolling again")
            self._identity_cache = self._enroll()
            return "wait", 0.0
        body = answer.json()
        if body["status"] == "finished":
            self.log(f"the experiment is finished (model version {body['model_version']})")
            return "finished", 0.0
        if body["status"] == "wait":
            return "wait", float(body["retry_after"])
        self._train(identity, parse_task(body))
        return "trained", 0.0

    def _download(self, identity: dict[str, str], url: str) -> bytes:
        headers = self._authorized(identity)
        if self._model_cache is not None:
            headers["If-None-Match"] = f'"{self._model_cache[0]}"'
        response = self._request("GET", url, headers=headers)
        if response.status_code == 304 and self._model_cache is not None:
            return self._model_cache[1]
        etag = response.headers.get("etag", "").strip('"')
        self._model_cache = (etag, response.content)
        return response.content

    def _network(self, spec: dict[str, Any]) -> torch.nn.Module:
        key = json.dumps(spec, sort_keys=True)
        if self._model is None or self._model[0] != key:
            self._model = (key, fast_layout(build_model(load_spec(spec))))
        return self._model[1]

    def _train(self, identity: dict[str, str], task: Task) -> None:
        # a secure round's plan is checked before training, not after
        plan = parse_plan(task.secure_aggregation) if task.secure_aggregation else None
        missing = unmet_requirements(task, self.settings.require, self.settings.min_noise)
        if missing:
            asked = [f"--require {r}" for r in self.settings.require]
            if self.settings.min_noise:
                asked.append(f"--min-noise {self.settings.min_noise:g}")
            raise PrivacyRefused(
                f"round {task.round} has no {' and no '.join(missing)}, which this device "
                f"requires ({' '.join(asked)}): it trains nothing and sends nothing"
            )
        self._path("pending_state.safetensors").unlink(missing_ok=True)
        version, params, extras = decode_model(self._download(identity, task.model_url))
        if version != task.model_version:
            raise ProtocolError(f"asked for model {task.model_version}, got {version}")
        local = LocalTraining(**task.training.model_dump())
        strategy = make_strategy(
            _STRATEGY.validate_python(task.strategy), num_clients=task.num_devices, local=local
        )
        own = ClientTask(
            round=task.training_round,
            params=params,
            extras=extras,
            client_state=self._client_state(),
        )
        self.log(f"round {task.round}: training model version {version} on {len(self.y)} examples")
        update = train_client(
            self._network(task.spec),
            strategy,
            own,
            self.x,
            self.y,
            local,
            client_generator(task.seed, task.training_round, self.rng_id),
            client_index=self.rng_id,
        )
        if plan is not None:
            self._secure_round(identity, task, plan, strategy, own, update)
            return
        if task.local_dp is not None:  # local DP: the noise is added before anything leaves
            dp = task.local_dp
            self.log(
                f"round {task.round}: local DP: delta clipped to {dp.clip_norm:g}, Gaussian "
                f"noise of std {dp.noise_multiplier * dp.clip_norm:g} added"
            )
            update = privatize(
                own,
                update,
                clip_norm=task.local_dp.clip_norm,
                noise_multiplier=task.local_dp.noise_multiplier,
                normal=device_normal,
            )
        data = encode_update(update, round=task.round, model_version=task.model_version)
        if update.client_state is not None:
            self._write(
                "pending_state.safetensors",
                encode_model({}, update.client_state, model_version=task.model_version),
            )
        self._write("pending.safetensors", data)
        pending = {"url": task.upload_url, "key": uuid.uuid4().hex, "round": task.round}
        self._write("pending.json", json.dumps(pending).encode())
        self._upload_pending(identity)

    def _upload_pending(self, identity: dict[str, str]) -> None:
        """Upload the update in the state folder, then advance or drop what came with it."""
        pending = json.loads(self._path("pending.json").read_text())
        headers = {**self._authorized(identity), "Idempotency-Key": pending["key"]}
        headers["Content-Type"] = "application/octet-stream"
        data = self._path("pending.safetensors").read_bytes()
        try:
            response = self._request("POST", pending["url"], content=data, headers=headers)
        except ProtocolError as exc:
            self.log(f"round {pending['round']}: the update was refused: {exc}")
            self._clear_pending(keep_state=False)
            if isinstance(exc, Unauthorized):
                raise
            return
        if response.status_code == 409:
            self.log(f"round {pending['round']}: too late ({_error_text(response)})")
            self._clear_pending(keep_state=False)
            return
        self.accepted += 1
        self.log(f"round {pending['round']}: update accepted")
        self._clear_pending(keep_state=True)

    # --- secure aggregation -------------------------------------------------------------

    def _secure_round(
        self,
        identity: dict[str, str],
        task: Task,
        plan: RoundPlan,
        strategy: Strategy,
        own: ClientTask,
        update: ClientUpdate,
    ) -> None:
        """Take part in the round's SecAgg+ stages with ``update`` (see the module)."""
        if task.secagg_url is None:
            raise ProtocolError(f"round {task.round} has a secure plan but no secagg_url")
        me = identity["device_id"]
        protocol = SecAggClient(me, plan.setup)
        encoded = contribution(strategy, plan, own, update, np.random.default_rng())
        if encoded.clipped:
            self.log(
                f"round {task.round}: {encoded.clipped} values were outside the secure "
                "aggregation range and were clipped"
            )
        base, headers = task.secagg_url, self._authorized(identity)
        limit = plan.graph.degree
        advertise = {
            "model_version": task.model_version,
            "keys": keys_to_json(protocol.advertise()),
        }
        if not self._secure_send(task.round, f"{base}/advertise", headers, advertise):
            return
        noise = ""
        if isinstance(plan.codec, SkellamCodec):
            noise = f", adding Skellam noise of variance {plan.codec.client_variance:.4g}"
        self.log(
            f"round {task.round}: keys sent; secure aggregation under way "
            f"({plan.graph.degree} neighbours, threshold {plan.graph.threshold}{noise})"
        )
        summed = False
        while True:
            response = self._request(
                "GET", base, params={"wait": self.settings.long_poll}, headers=headers
            )
            if response.status_code == 409:
                self.log(f"round {task.round}: {_error_text(response)}")
                return
            info = response.json()
            stage = info["stage"]
            if stage == "finished":
                if info["status"] == "closed" and summed:
                    self.accepted += 1
                    if update.client_state is not None:
                        self._write(
                            "client_state.safetensors",
                            encode_model({}, update.client_state, model_version=task.model_version),
                        )
                    self.log(f"round {task.round}: closed with this device's update in the sum")
                else:
                    self.log(f"round {task.round}: {info['status']} without this device's update")
                return
            if info.get("excluded"):
                self.log(f"round {task.round}: dropped from the secure round at stage {stage!r}")
                return
            if info.get("waiting"):
                continue
            try:
                if stage == "share":
                    sealed = protocol.share(neighbours_from_json(info.get("neighbours"), limit))
                    message: dict[str, Any] | bytes = {"shares": sealed_to_json(sealed)}
                elif stage == "masked":
                    shares = sealed_from_json(info.get("shares"), "shares", limit)
                    vector = protocol.masked(shares, encoded.values)
                    message = vector.astype(vector.dtype.newbyteorder("<")).tobytes()
                elif stage == "confirm":
                    view = view_from_json(info, plan.codec.max_clients)
                    summed = me in view.survivors
                    message = {"confirmations": sealed_to_json(protocol.confirm(view))}
                else:
                    sealed = sealed_from_json(info.get("confirmations"), "confirmations", limit)
                    message = shares_to_json(*protocol.unmask(sealed))
            except (SecAggRefused, SecAggAborted, ValueError) as exc:
                self.log(f"round {task.round}: refusing to go on with secure aggregation: {exc}")
                return
            if not self._secure_send(task.round, f"{base}/{stage}", headers, message):
                return

    def _secure_send(
        self, round: int, url: str, headers: dict[str, str], message: dict[str, Any] | bytes
    ) -> bool:
        """Post one stage's message; ``False`` if the server refused it (too late)."""
        stage = url.rsplit("/", 1)[-1]
        if os.environ.get("FEDGE_SECAGG_CRASH_AT") == stage:
            os.kill(os.getpid(), signal.SIGKILL)
        if isinstance(message, bytes):
            kwargs: dict[str, Any] = {"content": message}
            headers = {**headers, "Content-Type": "application/octet-stream"}
        else:
            kwargs = {"json": message}
        try:
            response = self._request("POST", url, headers=headers, **kwargs)
        except ProtocolError as exc:
            if isinstance(exc, Unauthorized):
                raise
            self.log(f"round {round}: the {stage} message was refused: {exc}")
            return False
        if response.status_code == 409:
            self.log(f"round {round}: the {stage} message came too late ({_error_text(response)})")
            return False
        return True

    def _clear_pending(self, *, keep_state: bool) -> None:
        state = self._path("pending_state.safetensors")
        if keep_state and state.exists():
            os.replace(state, self._path("client_state.safetensors"))
        state.unlink(missing_ok=True)
        self._path("pending.json").unlink(missing_ok=True)
        self._path("pending.safetensors").unlink(missing_ok=True)

    def close(self) -> None:
        self.http.close()


def parse_task(body: dict[str, Any]) -> Task:
    """A check-in's task, or a :class:`ProtocolError` that says why this device cannot take
    it: a field it does not know means the server asks for something (secure aggregation,
    local DP, ...) that this version of fedge cannot do, and ignoring it could skip a
    privacy measure the federation relies on."""
    try:
        return Task.model_validate(body)
    except ValidationError as exc:
        unknown = [
            ".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden"
        ]
        if unknown:
            raise ProtocolError(
                f"the server's task asks for {', '.join(unknown)}, which this version of fedge "
                f"({__version__}) does not know: upgrade fedge on this device"
            ) from None
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ProtocolError(f"the server sent a malformed task ({where}: {first['msg']})") from None


def parse_plan(data: Any) -> RoundPlan:
    """A task's SecAgg+ plan, or a :class:`ProtocolError` saying what is wrong with it."""
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object is expected, got {type(data).__name__}")
        return RoundPlan.from_json(data)
    except (KeyError, TypeError, ValueError, FedgeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ProtocolError(
            f"the server sent a malformed secure aggregation plan: {what}"
        ) from None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except (json.JSONDecodeError, AttributeError):
        return response.text[:200]
