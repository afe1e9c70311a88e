"""The federation server's logic, without HTTP: enrollment, check-in, uploads, rounds.

:class:`FederationServer` drives the same :class:`~fedge.fl.rounds.RoundCoordinator` as
the simulation, over devices that come and go, and keeps everything that matters in
:class:`~fedge.federation.state.FederationState` before it answers:

* an accepted update is written to disk and recorded before the device hears "201";
* a round closes by aggregating the stored updates (the same pure function the simulation
  calls), writing the new model and strategy state, and committing, in one SQLite
  transaction, the round's end, the new version and the next round;
* after a crash (SIGKILL at any point) the server starts from the last committed version
  and the open round with every update accepted so far; a round whose target was met but
  whose close did not commit is closed again, from the same files, to the same model.

Blocking work (SQLite, files, decoding, aggregation) runs in worker threads; one
:class:`asyncio.Lock` orders every change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedge.config import ExperimentConfig, SecureAggregationConfig
from fedge.data.dataset import FederatedData
from fedge.errors import (
    ConfigError,
    FedgeError,
    ProtocolError,
    StaleUpdate,
    StorageError,
    Unauthorized,
    UpdateRejected,
)
from fedge.federation.protocol import (
    Finished,
    LocalDPSettings,
    Task,
    TrainingSettings,
    UploadReceipt,
    Wait,
)
from fedge.federation.secure import SecureRound
from fedge.federation.state import Device, FederationState, hash_token
from fedge.federation.wire import decode_model, decode_update, encode_model
from fedge.fl.local import LocalTraining, evaluate
from fedge.fl.rounds import Round, RoundCoordinator, RoundPolicy, RoundStatus, RoundTally
from fedge.fl.sampling import clients_per_round
from fedge.fl.types import ClientUpdate, ServerState
from fedge.models.spec import ModelSpec, build_model, count_parameters, fast_layout, load_spec
from fedge.privacy.plan import PrivacyPlan, plan_privacy
from fedge.privacy.secagg import SecAggAborted, SecAggSettings, apply_secure_sum, plan_round
from fedge.privacy.secagg.aggregation import secagg_settings
from fedge.privacy.secagg.crypto import digest
from fedge.sim.build import check_cohort, make_strategy, model_spec

__all__ = ["FederationServer", "experiment_fingerprint", "local_training"]

log = logging.getLogger("fedge.server")


def local_training(config: ExperimentConfig) -> LocalTraining:
    """The clients' local SGD of an experiment."""
    return LocalTraining(**config.client.model_dump())


#: Keys that may change between restarts of a federation: its ``[deploy]`` settings
#: (deadlines, secrets), how many rounds to train (more, to go on after the end), and
#: what only a simulation uses or only names the run.
_MUTABLE_KEYS = {
    "deploy",
    "rounds",
    "name",
    "engine",
    "threads",
    "max_memory_mb",
    "ray_address",
    "ray_workers",
    "eval",
}


def experiment_fingerprint(config: ExperimentConfig) -> str:
    """SHA-256 of what makes a federation's models what they are: the config without
    :data:`_MUTABLE_KEYS`."""
    body = config.model_dump(mode="json", exclude=_MUTABLE_KEYS)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _num_devices(config: ExperimentConfig) -> int:
    if config.deploy.num_devices is not None:
        return config.deploy.num_devices
    num_clients = getattr(config.partition, "num_clients", None)
    if num_clients is None:
        raise ConfigError("set deploy.num_devices, the size of the fleet")
    return num_clients


class FederationServer:
    """One federation's server state and rules.

    Parameters
    ----------
    config:
        The experiment (its strategy, model, local training and ``[deploy]`` section).
    state_dir:
        Where records and tensors live; a restarted server resumes from it.
    secret:
        The enrollment secret (default: ``$FEDGE_ENROLLMENT_SECRET``, then
        ``deploy.enrollment_secret``).
    data:
        The dataset, for a preset model's input shape and for evaluating each new model on
        its test split; loaded from the config when ``None`` and needed.
    clock:
        Wall-clock seconds (tests may pass their own).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        state_dir: Path,
        *,
        secret: str | None = None,
        data: FederatedData | None = None,
        clock: Callable[[], float] = time.time,
    ):
        deploy = config.deploy
        self.config = config
        self.clock = clock
        self.secret = (
            secret or os.environ.get("FEDGE_ENROLLMENT_SECRET") or deploy.enrollment_secret
        )
        if not self.secret or len(self.secret) < 8:
            raise ConfigError(
                "the server needs an enrollment secret of at least 8 characters: "
                "deploy.enrollment_secret or $FEDGE_ENROLLMENT_SECRET"
            )
        self.num_devices = _num_devices(config)
        self.local = local_training(config)
        self.strategy = make_strategy(
            config.strategy, num_clients=self.num_devices, local=self.local
        )
        data = data if data is not None else self._load_data()
        self.spec = self._spec(data)
        #: The test split the server evaluates each new model on (the training split is
        #: the devices' business: it is not kept).
        self.test = data.test if data is not None and deploy.evaluate else None
        target = clients_per_round(
            self.num_devices,
            count=config.server.clients_per_round,
            fraction=None if config.server.clients_per_round else (config.server.fraction or 1.0),
        )
        self.policy = RoundPolicy(
            target=target,
            over_selection=deploy.over_selection,
            quorum=deploy.quorum,
            deadline=deploy.deadline_seconds,
            max_samples=deploy.max_samples,
        )
        check_cohort(config.strategy, self.policy.min_updates)
        #: Differential privacy (DP-FedAvg, the server adding the noise), when configured.
        self.privacy: PrivacyPlan | None = None
        #: Secure aggregation settings, when rounds run SecAgg+.
        self.secagg: SecAggSettings | None = None
        if config.privacy is not None:
            self._setup_privacy(config, target)
        #: Model versions to train: the config's, or fewer when the privacy budget stops.
        self.rounds = self.privacy.rounds if self.privacy is not None else config.rounds
        self.lock = asyncio.Lock()
        self.due = asyncio.Event()
        self._opened = asyncio.Event()  # set (and replaced) when a round ends
        self.rejections: deque[dict[str, Any]] = deque(maxlen=50)
        self.rejected_in_round = 0
        self.last_seen: dict[str, float] = {}
        #: Set when the process shuts down (event streams end).
        self.stopping = False
        self._eval_model = fast_layout(build_model(self.spec)) if self.test is not None else None
        self._evaluating: asyncio.Task[None] | None = None
        self.store = FederationState(state_dir)
        self.store.claim(experiment_fingerprint(config))
        self.devices = {d.id: d for d in self.store.devices()}
        self._dummy_hash = hash_token(secrets.token_urlsafe(32))
        #: The open round's secure aggregation (``None`` without it).
        self.secure: SecureRound | None = None
        self._stage_changed = asyncio.Event()  # set (and replaced) when a secure stage ends
        self.coordinator = RoundCoordinator(
            self.strategy, self._initial_state(), self.policy, rounds=self.rounds
        )
        self._cache_model()
        self._resume_round()
        self.history = self.store.round_history()
        reference = [self.coordinator.state.params]
        reference += self.strategy.reported_extras(self.coordinator.state).values()
        tensor_bytes = sum(t.numel() * t.element_size() for p in reference for t in p.values())
        #: Largest upload body: the tensors plus room for names and metadata.
        self.max_upload_bytes = tensor_bytes + (1 << 20)
        self._task_fields = {
            "seed": config.seed,
            "num_devices": self.num_devices,
            "training": TrainingSettings(**config.client.model_dump()),
            "strategy": config.strategy.model_dump(mode="json"),
            "spec": self.spec.model_dump(mode="json", exclude_none=True),
        }
        if self.privacy is not None and self.privacy.ledger.local:
            self._task_fields["local_dp"] = LocalDPSettings(
                clip_norm=self.privacy.clip_norm, noise_multiplier=self.privacy.noise_multiplier
            )

    # --- start-up -----------------------------------------------------------------------

    def _setup_privacy(self, config: ExperimentConfig, target: int) -> None:
        """DP-FedAvg on the strategy, secure aggregation on the rounds, as configured.
        With distributed DP the devices add the noise before masking (the task's plan says
        how much) and the server adds none; with local DP each device clips and noises its
        own update (the task's ``local_dp`` says how) and the server averages them with
        equal weights."""
        privacy = config.privacy
        assert privacy is not None
        if privacy.dp in ("central", "distributed", "local"):
            # who takes part depends on who checks in, not on a uniform draw: no
            # amplification by sampling in the ledger
            distributed = privacy.dp == "distributed"
            self.privacy = plan_privacy(
                privacy,
                num_clients=self.num_devices,
                clients_per_round=target,
                rounds=config.rounds,
                amplified=False,
                dimension=count_parameters(build_model(self.spec)) if distributed else None,
                max_clients=self.policy.selected,
            )
            self.strategy = self.privacy.wrap(self.strategy, seed=config.seed)
            if self.privacy.budget_stop:
                log.warning("privacy budget: %s", self.privacy.budget_stop)
        if privacy.secure_aggregation is not None:
            self.secagg = self._secagg_settings(privacy.secure_aggregation)

    def _secagg_settings(self, config: SecureAggregationConfig) -> SecAggSettings:
        settings = secagg_settings(config)
        if settings.weighting == "samples" and settings.max_weight is None and not self.privacy:
            raise ConfigError(
                "secure aggregation on a server weighs devices by min(n_k, max_weight): set "
                'privacy.secure_aggregation.max_weight, or weighting = "uniform"'
            )
        if settings.simulated_dropout:
            raise ConfigError("privacy.secure_aggregation.simulated_dropout is for simulations")
        self.strategy.check_sum_path()
        return settings

    def _load_data(self) -> FederatedData | None:
        needs = self.config.model.spec is None
        if not (needs or self.config.deploy.evaluate):
            return None
        from fedge.data.load import load_data

        try:
            return load_data(self.config.data, seed=self.config.seed)
        except FedgeError as exc:
            if needs:
                raise ConfigError(
                    f"the server builds a preset model from the data's shape, but cannot "
                    f"load the data ({exc}): give model.spec, or the data"
                ) from None
            log.warning("no server-side evaluation: %s", exc)
            return None

    def _spec(self, data: FederatedData | None) -> ModelSpec:
        if self.config.model.spec is not None and data is None:
            return load_spec(self.config.model.spec)
        assert data is not None  # _load_data raised otherwise
        return model_spec(self.config, data)

    def _initial_state(self) -> ServerState:
        version = self.store.latest_version()
        if version is None:
            model = build_model(self.spec, seed=self.config.seed)
            state = self.strategy.init(dict(model.named_parameters()))
            sha = self._write_version(state)
            self.store.add_initial_version(sha)
            return state
        model, server = self.store.read_version(version)
        _, params, _ = decode_model(model)
        _, _, extras = decode_model(server)
        return ServerState(params=params, rounds_completed=version, extras=extras)

    def _write_version(self, state: ServerState) -> str:
        task = self.strategy.client_task(state)
        model = encode_model(state.params, task.extras, model_version=state.rounds_completed)
        server = encode_model({}, state.extras, model_version=state.rounds_completed)
        return self.store.write_version_files(state.rounds_completed, model, server)

    def _resume_round(self) -> None:
        row = self.store.current_round()
        if row is None:
            if not self.coordinator.finished:
                number = self.store.last_round_number() + 1
                self.store.open_round(number, self.coordinator.state.rounds_completed)
                self.coordinator.open(number)
                self._open_secure(number)
            return
        number, version, started_at = row
        if version != self.coordinator.state.rounds_completed:
            raise FedgeError(
                f"server state is inconsistent: open round {number} trains version {version} "
                f"but the latest model is version {self.coordinator.state.rounds_completed}"
            )
        current = self.coordinator.open(number)
        current.started_at = started_at
        current.assigned = self.store.assignments(number)
        current.accepted = {u.device: u.key for u in self.store.accepted(number)}
        self._open_secure(number)
        log.info(
            "resuming round %d: %d tasks out, %d updates accepted",
            number,
            len(current.assigned),
            len(current.accepted),
        )

    def _open_secure(self, number: int) -> None:
        """Set up round ``number``'s secure aggregation from what the store holds (nothing
        for a new round; every accepted message and stage after a restart)."""
        self.secure = None
        if self.secagg is None:
            return
        plan = plan_round(
            self.strategy,
            self.coordinator.state,
            self.secagg,
            cohort=self.policy.selected,
            context=digest("fedge federation", self.store.federation_id(), str(number)),
        )
        self.secure = SecureRound.replay(
            plan, number, self.store.secagg_stages(number), self.store.secagg_messages(number)
        )
        current = self.coordinator.round
        assert current is not None
        current.stage = self.secure.stage
        current.accepted = {
            device: hashlib.sha256(body).hexdigest()
            for device, body in self.secure.received["advertise"].items()
        }

    def _cache_model(self) -> None:
        version = self.coordinator.state.rounds_completed
        self.model_bytes = self.store.read_version(version)[0]
        self.model_etag = hashlib.sha256(self.model_bytes).hexdigest()

    # --- devices ------------------------------------------------------------------------

    async def enroll(self, secret: str, kind: str) -> tuple[str, str]:
        """A new device id and bearer token, for the right enrollment secret."""
        if not hmac.compare_digest(secret.encode(), self.secret.encode()):
            raise Unauthorized("wrong enrollment secret")
        async with self.lock:
            if len(self.devices) >= self.config.deploy.max_devices:
                raise ProtocolError(
                    f"the federation is full ({self.config.deploy.max_devices} devices)"
                )
            device_id = f"d{secrets.token_hex(8)}"
            token = f"{device_id}.{secrets.token_urlsafe(32)}"
            device = Device(device_id, hash_token(token), kind)
            await asyncio.to_thread(self.store.add_device, device)
            self.devices[device_id] = device
        return device_id, token

    def authenticate(self, authorization: str | None) -> str:
        """The device id a ``Bearer`` header proves, compared in constant time."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token: enroll, then send Authorization: Bearer")
        token = token.strip()
        device = self.devices.get(token.partition(".")[0])
        expected = device.token_hash if device is not None else self._dummy_hash
        if not hmac.compare_digest(hash_token(token), expected) or device is None:
            raise Unauthorized("unknown device or wrong token")
        return device.id

    # --- check-in -----------------------------------------------------------------------

    def _retry_after(self) -> float:
        """A jittered wait until the next round is likely to have room, so that a large
        fleet does not poll in lockstep."""
        deploy = self.config.deploy
        current = self.coordinator.round
        durations = [h["seconds"] for h in self.history[-5:] if "seconds" in h]
        typical = statistics.median(durations) if durations else deploy.min_poll_seconds
        remaining = typical
        if current is not None and current.started_at is not None:
            remaining = typical - (self.clock() - current.started_at)
            left = current.seconds_left(self.clock())
            if left is not None:
                remaining = min(remaining, left)
        base = min(max(remaining, deploy.min_poll_seconds), deploy.max_poll_seconds)
        return round(base * random.uniform(0.75, 1.25), 3)

    def _task(self) -> Task:
        current = self.coordinator.round
        assert current is not None
        return Task(
            round=current.number,
            model_version=current.model_version,
            training_round=current.model_version + 1,
            model_url=f"/v1/models/{current.model_version}",
            upload_url=f"/v1/rounds/{current.number}/updates",
            deadline_seconds=current.seconds_left(self.clock()),
            secure_aggregation=self.secure.plan.to_json() if self.secure is not None else None,
            secagg_url=f"/v1/rounds/{current.number}/secagg" if self.secure is not None else None,
            **self._task_fields,
        )

    async def checkin(self, device: str, hold: float = 0.0) -> Task | Wait | Finished:
        """A task for ``device`` if the open round has room for it, else when to return.

        With ``hold`` > 0 (a long poll) a device that would be told to wait is answered
        as soon as the next round opens, or after ``hold`` seconds with the wait."""
        opened = self._opened
        answer = await self._checkin(device)
        if isinstance(answer, Wait) and hold > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), hold)
                answer = await self._checkin(device)
        return answer

    async def _checkin(self, device: str) -> Task | Wait | Finished:
        self.last_seen[device] = self.clock()
        if self.coordinator.finished:
            return Finished(model_version=self.coordinator.state.rounds_completed)
        async with self.lock:
            current = self.coordinator.round
            if current is None or current.status is not RoundStatus.OPEN:
                return Wait(retry_after=self._retry_after(), reason="no round is open")
            if device in current.accepted:
                return Wait(
                    retry_after=self._retry_after(),
                    round=current.number,
                    reason="your update is in; waiting for the round to close",
                )
            if device in current.assigned:
                return self._task()
            if not current.has_slot():
                return Wait(
                    retry_after=self._retry_after(),
                    round=current.number,
                    reason="this round has all the devices it needs",
                )
            now = self.clock()
            first = current.started_at is None
            await asyncio.to_thread(self.store.assign, current.number, device, now, first)
            current.assign(device, now)
        return self._task()

    # --- uploads ------------------------------------------------------------------------

    def reject(self, device: str | None, status: int, reason: str) -> None:
        """Note a refused request for the dashboard (nothing durable changes)."""
        self.rejected_in_round += 1
        self.rejections.append(
            {"at": self.clock(), "device": device, "status": status, "reason": reason}
        )

    async def upload(
        self, device: str, round: int, key: str, body: bytes
    ) -> tuple[int, UploadReceipt]:
        """Store ``device``'s update for ``round`` durably; ``(201, receipt)`` when new,
        ``(200, receipt)`` for a retry of an update already accepted under ``key``.

        Raises :class:`~fedge.errors.UpdateRejected` (400) for malformed or invalid
        contents and :class:`~fedge.errors.StaleUpdate` (409) for the wrong round or
        model version, a closed round, a device without a task or a second update; in
        every such case nothing is stored.
        """
        if self.secure is not None:
            raise StaleUpdate(
                f"round {self.secure.number} runs secure aggregation: post the keys to "
                f"/v1/rounds/{self.secure.number}/secagg/advertise instead of an update"
            )
        receipt = UploadReceipt(duplicate=True, round=round, device_id=device)
        if await self._already_accepted(device, round, key):
            return 200, receipt
        decoded = await asyncio.to_thread(decode_update, body, device=device)
        if decoded.round != round:
            raise StaleUpdate(f"the update names round {decoded.round} but was sent to {round}")
        self._admit(device, decoded.round, decoded.model_version, key)
        await asyncio.to_thread(self.coordinator.check, decoded.update)
        async with self.lock:
            if not self._admit(device, decoded.round, decoded.model_version, key):
                return 200, receipt
            await asyncio.to_thread(
                self.store.add_update, round, device, key, decoded.update.num_samples, body
            )
            current = self.coordinator.round
            assert current is not None
            current.accept(device, key)
            if current.due(self.clock()) is not None:
                self.due.set()
        return 201, UploadReceipt(duplicate=False, round=round, device_id=device)

    async def _already_accepted(self, device: str, round: int, key: str) -> bool:
        current = self.coordinator.round
        if current is not None and current.number == round:
            return current.accepted.get(device) == key
        async with self.lock:  # reads on the connection wait for writes to commit
            return await asyncio.to_thread(self.store.accepted_key, round, device) == key

    def _admit(self, device: str, round: int, model_version: int, key: str) -> bool:
        current = self.coordinator.round
        if current is None:
            raise StaleUpdate(f"round {round} is closed: the experiment has finished")
        return current.admit(device, round, model_version, key)

    # --- secure aggregation -------------------------------------------------------------

    async def secure_post(self, device: str, round: int, stage: str, body: bytes) -> int:
        """Accept ``device``'s message for ``stage`` of secure round ``round``, durably:
        201 when new, 200 for a retry of the same message.

        Raises :class:`~fedge.errors.UpdateRejected` (400) for a malformed message,
        :class:`~fedge.errors.StaleUpdate` (409) for another round or stage, a device
        that takes no part in the stage or a second, different message, and
        :class:`~fedge.privacy.secagg.crypto.SecAggRefused` (409) for one that breaks the
        protocol; nothing is stored then.
        """
        async with self.lock:
            secure, current = self.secure, self.coordinator.round
            if secure is None or current is None:
                raise StaleUpdate(f"round {round} is not an open secure round")
            secure.check_stage(round, stage)
            if secure.duplicate(stage, device, body):
                return 200
            key = hashlib.sha256(body).hexdigest()
            if stage == "advertise":
                version = _model_version(body)
                if not current.admit(device, round, version, key):
                    return 200
            try:
                await asyncio.to_thread(secure.accept, stage, device, body)
            except ValueError as exc:
                raise UpdateRejected(f"{stage} message from {device}: {exc}") from None
            try:
                await asyncio.to_thread(self.store.add_secagg_message, round, stage, device, body)
            except StorageError:
                self._open_secure(round)  # back to what is durable
                raise
            if stage == "advertise":
                current.accept(device, key)
                if current.due(self.clock()) is not None:
                    self.due.set()
            elif not secure.waiting_for():
                self.due.set()
        return 201

    async def secure_input(self, device: str, round: int, hold: float = 0.0) -> dict[str, Any]:
        """What ``device`` needs for the open stage of secure round ``round``; with
        ``hold`` > 0 a device told to wait is answered when the stage changes."""
        changed = self._stage_changed
        answer = self._secure_answer(device, round)
        if answer.get("waiting") and hold > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), hold)
            answer = self._secure_answer(device, round)
        return answer

    def _secure_answer(self, device: str, round: int) -> dict[str, Any]:
        secure = self.secure
        if secure is not None and secure.number == round:
            return secure.input_for(device)
        past = next((h for h in reversed(self.history) if h["round"] == round), None)
        if past is None:
            raise StaleUpdate(f"round {round} is not a secure round of this server")
        return {"round": round, "stage": "finished", "status": past["status"]}

    def _secure_due(self) -> bool:
        secure = self.secure
        if secure is None or secure.stage == "advertise" or secure.opened_at is None:
            return False
        assert self.secagg is not None
        late = self.clock() >= secure.opened_at + self.secagg.stage_seconds
        return late or not secure.waiting_for()

    async def _advance_secure(self) -> None:
        """End the open secure stage (the lock is held): open the next, or unmask and
        close the round, or abandon it when too few devices answered."""
        secure, current = self.secure, self.coordinator.round
        assert secure is not None and current is not None
        now = self.clock()
        try:
            if secure.stage == "unmask":
                state = await asyncio.to_thread(self._finish_secure)
                version = (
                    state.rounds_completed,
                    await asyncio.to_thread(self._write_version, state),
                )
                metrics = self._round_metrics(current)
                metrics["secure_aggregation"] = secure.summary()
                await self._conclude(current, state, version, metrics)
                return
            await asyncio.to_thread(secure.close_stage, now)
            await asyncio.to_thread(self.store.open_secagg_stage, secure.number, secure.stage, now)
        except SecAggAborted as exc:
            log.error("round %d: %s", current.number, exc)
            metrics = self._round_metrics(current)
            metrics.update(error=str(exc), secure_aggregation=secure.summary())
            await self._conclude(current, self.coordinator.state, None, metrics)
            return
        except StorageError:
            self._open_secure(secure.number)  # back to what is durable; retried
            raise
        current.stage = secure.stage
        log.info("round %d: secure aggregation stage %r", current.number, secure.stage)
        self._wake_stage()

    def _finish_secure(self) -> ServerState:
        secure = self.secure
        assert secure is not None and secure.protocol.view is not None
        total = secure.protocol.finish()
        count = len(secure.protocol.view.survivors)
        return apply_secure_sum(self.strategy, self.coordinator.state, secure.plan, total, count)

    def _wake_stage(self) -> None:
        self._stage_changed.set()
        self._stage_changed = asyncio.Event()

    # --- closing rounds -----------------------------------------------------------------

    def _stored_updates(self, number: int) -> Iterator[ClientUpdate]:
        for stored in self.store.accepted(number):
            yield decode_update(self.store.read_update(stored), device=stored.device).update

    async def tick(self) -> None:
        """End the open round if it is due (target met, or deadline passed), or the open
        secure-aggregation stage if it is."""
        if self.secure is not None and self.secure.stage != "advertise":
            if self._secure_due():  # the round's own closing is behind it
                async with self.lock:
                    if self._secure_due():
                        await self._advance_secure()
            return
        current = self.coordinator.round
        if current is None or current.due(self.clock()) is None:
            return
        async with self.lock:
            current = self.coordinator.round
            if current is not None and current.due(self.clock()) is not None:
                await self._end_round()

    async def run_rounds(self, interval: float = 0.5) -> None:
        """Close rounds as they become due, until cancelled: at once when an upload meets
        the target, else every ``interval`` seconds for deadlines. A failure (a full disk)
        is logged and retried: the round's updates stay on disk."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.due.wait(), interval)
            self.due.clear()
            try:
                await self.tick()
            except FedgeError as exc:
                log.error("cannot end round: %s (retrying)", exc)
                await asyncio.sleep(1.0)

    async def _end_round(self) -> None:
        """Close or abandon the open round (the lock is held); a secure round that has
        its devices goes on to its key sharing instead."""
        current = self.coordinator.round
        assert current is not None
        outcome = current.due(self.clock())
        secure = self.secure
        if outcome is RoundStatus.CLOSED and secure is not None and secure.stage == "advertise":
            await self._advance_secure()
            return
        metrics = self._round_metrics(current)
        version: tuple[int, str] | None = None
        state = self.coordinator.state
        if outcome is RoundStatus.CLOSED:
            tally = RoundTally()
            try:
                state = await asyncio.to_thread(
                    self.coordinator.aggregate, self._stored_updates(current.number), tally
                )
            except StorageError:
                raise  # retried by the round loop: the updates are still on disk
            except FedgeError as exc:  # e.g. a robust aggregator refusing too few updates
                log.error("round %d cannot be aggregated: %s", current.number, exc)
                metrics["error"] = str(exc)
            else:
                version = (
                    state.rounds_completed,
                    await asyncio.to_thread(self._write_version, state),
                )
                metrics.update(
                    samples=tally.samples, train_loss=tally.train_loss, devices=tally.devices
                )
        await self._conclude(current, state, version, metrics)

    def _round_metrics(self, current: Round) -> dict[str, Any]:
        return {
            "tasks": len(current.assigned),
            "participants": len(current.accepted),
            "dropouts": len(current.assigned) - len(current.accepted),
            "rejected": self.rejected_in_round,
        }

    async def _conclude(
        self,
        current: Round,
        state: ServerState,
        version: tuple[int, str] | None,
        metrics: dict[str, Any],
    ) -> None:
        """Commit the end of ``current`` (closed with ``version``, or abandoned) and open
        the next round (the lock is held)."""
        metrics["seconds"] = self.clock() - (current.started_at or self.clock())
        if version is None:
            state = self.coordinator.state
        elif self.privacy is not None:  # the ledger after this release
            metrics["epsilon"] = self.privacy.epsilon(state.rounds_completed)
        upcoming = (
            None
            if state.rounds_completed >= self.rounds
            else (current.number + 1, state.rounds_completed)
        )
        await asyncio.to_thread(
            self.store.commit_round,
            current.number,
            "closed" if version is not None else "abandoned",
            metrics,
            version=version,
            next_round=upcoming,
        )
        if version is not None:
            self.coordinator.advance(state)
            self._cache_model()
        else:
            self.coordinator.abandon()
        log.info("round %d %s: %s", current.number, current.status.value, metrics)
        self.history.append(
            {
                "round": current.number,
                "model_version": current.model_version,
                "status": current.status.value,
                **metrics,
                "test_loss": None,
                "test_accuracy": None,
            }
        )
        await asyncio.to_thread(self.store.drop_update_data, current.number)
        if self.secure is not None:
            await asyncio.to_thread(self.store.drop_secagg_data, current.number)
        self.rejected_in_round = 0
        self.secure = None
        if upcoming is not None:
            self.coordinator.open(upcoming[0])
            self._open_secure(upcoming[0])
        self._wake_stage()
        self._opened.set()  # wake long polls: a new round, or the end
        self._opened = asyncio.Event()
        if version is not None:
            self._start_evaluation(state, self.history[-1])

    # --- evaluation ---------------------------------------------------------------------

    def _start_evaluation(self, state: ServerState, entry: dict[str, Any]) -> None:
        """Test ``state``'s model on the test split in the background (one at a time, in
        order), then record the result."""
        if self.test is None:
            return
        previous = self._evaluating

        async def run() -> None:
            if previous is not None:
                await previous
            try:
                loss, acc = await asyncio.to_thread(self._evaluate, state)
                async with self.lock:  # one writer on the SQLite connection at a time
                    await asyncio.to_thread(
                        self.store.add_evaluation, state.rounds_completed, loss, acc
                    )
            except (FedgeError, RuntimeError) as exc:
                log.error("evaluation of model version %d failed: %s", state.rounds_completed, exc)
                return
            entry.update(test_loss=loss, test_accuracy=acc)

        self._evaluating = asyncio.get_running_loop().create_task(run())

    def _evaluate(self, state: ServerState) -> tuple[float, float]:
        assert self.test is not None and self._eval_model is not None
        test = self.test
        return evaluate(
            self._eval_model,
            test.x,
            test.y,
            params=state.params,
            batch_size=self.config.eval.batch_size,
        )

    async def wait_idle(self) -> None:
        """Wait for a running evaluation (before shutting down)."""
        if self._evaluating is not None:
            await self._evaluating

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the dashboard shows, as JSON."""
        now = self.clock()
        kinds: dict[str, int] = {}
        for device in self.devices.values():
            kinds[device.kind] = kinds.get(device.kind, 0) + 1
        active_window = max(60.0, 3 * self.config.deploy.max_poll_seconds)
        current = self.coordinator.describe()
        if self.coordinator.round is not None:
            current["deadline_seconds"] = self.coordinator.round.seconds_left(now)
            current["rejected"] = self.rejected_in_round
        return {
            "experiment": self.config.name,
            "strategy": self.strategy.name,
            "rounds": self.rounds,
            "privacy": (
                self.privacy.guarantee(self.coordinator.state.rounds_completed)
                if self.privacy is not None
                else None
            ),
            "model_version": self.coordinator.state.rounds_completed,
            "finished": self.coordinator.finished,
            "round": current if not self.coordinator.finished else None,
            "devices": {
                "enrolled": len(self.devices),
                "active": sum(1 for t in self.last_seen.values() if now - t < active_window),
                "by_kind": kinds,
            },
            "history": [
                {k: v for k, v in h.items() if k != "devices"} for h in self.history[-500:]
            ],
            "rejections": list(self.rejections)[-20:],
        }

    def close(self) -> None:
        self.store.close()


def _model_version(body: bytes) -> int:
    """The model version an ``advertise`` message names (the device trained on it)."""
    try:
        version = json.loads(body).get("model_version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UpdateRejected("the advertised keys must be a JSON object") from None
    if isinstance(version, bool) or not isinstance(version, int):
        raise UpdateRejected("the advertised keys must name the model_version trained")
    return version
