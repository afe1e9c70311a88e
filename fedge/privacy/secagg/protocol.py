"""SecAgg+ as two transport-free state machines: :class:`SecAggClient`, :class:`SecAggServer`.

Bonawitz et al. "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017, with the neighbourhood graph of Bell et al., CCS 2020. Five stages:

``advertise``
    Each client sends two X25519 public keys: one to agree channel keys, one to agree
    pairwise mask seeds. The clients that answer form U1; the server draws the Harary
    graph over U1 and gives each client its neighbours' keys and Shamir x-coordinates.
``share``
    Each client draws a self-mask seed b_i and Shamir-shares it and its mask private key
    t-out-of-k among its neighbours, each pair of shares sealed with AES-GCM under the
    channel key of the pair (associated data: round context, stage, sender, receiver).
    The clients that answer form U2; the server forwards each ciphertext to its receiver.
``masked``
    Each client sends y_i = x_i + PRG(b_i) + Σ_j ±PRG(s_ij) mod 2^b over its neighbours j
    in U2 (+ if i < j, − otherwise), s_ij agreed from the mask keys. The clients that
    answer form the survivors S = U3; the dropped clients are D = U2 \\ S.
``confirm``
    Consistency check: the server tells every survivor S and D; each checks them against
    what it knows (disjoint, itself in S, each neighbour that shared with it in exactly one
    of the two) and seals the digest of this view to each surviving neighbour.
``unmask``
    Each client opens its neighbours' confirmations and needs t − 1 of them (t with its
    own) to match its view; then it reveals its share of b_j for every surviving neighbour
    and of the mask key of every dropped one, never both for one client. The server
    rebuilds them (each rebuilt mask key must match the public key its owner advertised)
    and removes the masks: Σ_{i∈S} x_i mod 2^b. A secret with fewer than t shares aborts the
    round, and nothing is aggregated.

Every refusal raises :class:`~fedge.privacy.secagg.crypto.SecAggRefused`; an aborted
round raises :class:`SecAggAborted`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.errors import FedgeError
from fedge.privacy.secagg.crypto import (
    FIELD_PRIME,
    SECRET_BYTES,
    KeyPair,
    SecAggRefused,
    associated_data,
    derive_key,
    digest,
    mask_stream,
    open_sealed,
    random_secret,
    seal,
    secret_bytes,
    shamir_combine,
    shamir_split,
)
from fedge.privacy.secagg.params import harary_neighbours

__all__ = [
    "STAGES",
    "Neighbour",
    "PublicKeys",
    "RoundSetup",
    "SecAggAborted",
    "SecAggClient",
    "SecAggServer",
    "View",
]

STAGES = ("advertise", "share", "masked", "confirm", "unmask")
CHANNEL, PAIR_MASK, SELF_MASK = (
    b"fedge secagg channel v1",
    b"fedge secagg pair mask v1",
    (b"fedge secagg self mask v1"),
)


class SecAggAborted(FedgeError):
    """A secure round cannot complete (too many dropouts at some stage); nothing of it is
    aggregated."""


@dataclass(frozen=True)
class RoundSetup:
    """What every party of one secure round agrees on.

    ``context`` binds every key derivation and every ciphertext to this round (fedge uses
    a digest of the federation id, the round number and the attempt). Masked vectors are
    ``length`` unsigned integers modulo 2^``modulus_bits``. With distributed DP the sum
    holds enough noise only if ``min_survivors`` clients' vectors are in it: the server
    aborts with fewer, and a client refuses to unmask a smaller list of survivors.
    """

    context: bytes
    threshold: int
    modulus_bits: int
    length: int
    min_survivors: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.modulus_bits <= 64:
            raise ValueError(f"modulus bits must be in [8, 64], got {self.modulus_bits}")
        if self.threshold < 2:
            raise ValueError(f"the Shamir threshold must be >= 2, got {self.threshold}")
        if self.length < 1:
            raise ValueError("the vector must hold at least one value")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.modulus_bits <= 32 else np.uint64)

    def reduce(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` modulo 2^b (the dtype's wrap-around is modulo 2^32 or 2^64)."""
        bits = self.modulus_bits
        if bits in (32, 64):
            return vector
        return vector & self.dtype.type((1 << bits) - 1)

    def prg(self, seed: bytes) -> np.ndarray:
        return self.reduce(mask_stream(seed, self.length, self.dtype))


@dataclass(frozen=True)
class PublicKeys:
    """A client's two X25519 public keys (32 bytes each)."""

    channel: bytes
    mask: bytes

    def __post_init__(self) -> None:
        for name in ("channel", "mask"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise SecAggRefused(f"the {name} public key must be 32 bytes")
        if self.channel == self.mask:
            raise SecAggRefused("the channel and mask public keys must differ")


@dataclass(frozen=True)
class Neighbour:
    """A neighbour as the server announces it: its keys and its Shamir x-coordinate."""

    keys: PublicKeys
    x: int


@dataclass(frozen=True)
class View:
    """The server's account of the masked stage: who survived, who dropped."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def digest(self, context: bytes) -> bytes:
        return digest(context, "view", *sorted(self.survivors), "|", *sorted(self.dropped))


def _sign_positive(me: str, other: str) -> bool:
    return me < other


def _pair_seed(own: KeyPair, peer_mask_public: bytes, context: bytes) -> bytes:
    return derive_key(own.agree(peer_mask_public), context, PAIR_MASK)


def _self_seed(seed: int, context: bytes) -> bytes:
    return derive_key(secret_bytes(seed), context, SELF_MASK)


class SecAggClient:
    """One client's side of one secure round; call the stages in order, once each."""

    def __init__(self, me: str, setup: RoundSetup):
        self.me = me
        self.setup = setup
        self._channel = KeyPair()
        self._mask = KeyPair()
        self._self_seed = random_secret()
        self._stage = 0
        self._neighbours: dict[str, Neighbour] = {}
        self._channel_keys: dict[str, bytes] = {}
        self._shares: dict[str, tuple[int, int]] = {}  # sender → (share of b, share of key)
        self._view: View | None = None

    def _enter(self, stage: str) -> None:
        expected = STAGES[self._stage] if self._stage < len(STAGES) else "none (finished)"
        if stage != expected:
            raise SecAggRefused(
                f"client {self.me}: asked for stage {stage!r}, expected {expected!r}"
            )
        self._stage += 1

    def _ad(self, stage: str, sender: str, receiver: str) -> bytes:
        return associated_data(self.setup.context, stage, sender, receiver)

    def advertise(self) -> PublicKeys:
        self._enter("advertise")
        return PublicKeys(channel=self._channel.public, mask=self._mask.public)

    def share(self, neighbours: Mapping[str, Neighbour]) -> dict[str, bytes]:
        """Sealed shares of b_i and of the mask key for each neighbour."""
        self._enter("share")
        t = self.setup.threshold
        if self.me in neighbours:
            raise SecAggRefused(f"client {self.me}: listed as its own neighbour")
        if len(neighbours) < t:
            raise SecAggRefused(
                f"client {self.me}: {len(neighbours)} neighbours cannot hold a {t}-out-of-n share"
            )
        xs = [n.x for n in neighbours.values()]
        if len(set(xs)) != len(xs) or not all(0 < x < FIELD_PRIME for x in xs):
            raise SecAggRefused(
                f"client {self.me}: neighbour x-coordinates must be distinct and nonzero"
            )
        self._neighbours = dict(neighbours)
        b_shares = shamir_split(self._self_seed, xs, t)
        key_shares = shamir_split(self._mask.secret, xs, t)
        out = {}
        for (other, nb), b, k in zip(neighbours.items(), b_shares, key_shares, strict=True):
            key = derive_key(self._channel.agree(nb.keys.channel), self.setup.context, CHANNEL)
            self._channel_keys[other] = key
            out[other] = seal(
                key, secret_bytes(b) + secret_bytes(k), self._ad("share", self.me, other)
            )
        return out

    def masked(self, received: Mapping[str, bytes], values: np.ndarray) -> np.ndarray:
        """y_i: ``values`` (already in [0, 2^b)) plus the self mask and the pairwise masks
        with every neighbour whose shares arrived."""
        self._enter("masked")
        setup = self.setup
        for sender, sealed in received.items():
            if sender not in self._neighbours:
                raise SecAggRefused(f"client {self.me}: a share from {sender}, not a neighbour")
            plain = open_sealed(
                self._channel_keys[sender],
                sealed,
                self._ad("share", sender, self.me),
                f"client {self.me}: share from {sender}",
            )
            if len(plain) != 2 * SECRET_BYTES:
                raise SecAggRefused(f"client {self.me}: malformed share from {sender}")
            b = int.from_bytes(plain[:SECRET_BYTES], "little")
            k = int.from_bytes(plain[SECRET_BYTES:], "little")
            if b >= FIELD_PRIME or k >= FIELD_PRIME:
                raise SecAggRefused(f"client {self.me}: share from {sender} outside the field")
            self._shares[sender] = (b, k)
        if len(self._shares) < setup.threshold:
            raise SecAggAborted(
                f"client {self.me}: only {len(self._shares)} neighbours shared keys, "
                f"{setup.threshold} are needed to rebuild this client's masks"
            )
        if values.shape != (setup.length,) or values.dtype != setup.dtype:
            raise ValueError(f"values must be {setup.length} {setup.dtype} integers")
        y = values + setup.prg(_self_seed(self._self_seed, setup.context))
        for other in self._shares:
            mask = setup.prg(
                _pair_seed(self._mask, self._neighbours[other].keys.mask, setup.context)
            )
            y = y + mask if _sign_positive(self.me, other) else y - mask
        return setup.reduce(y)

    def confirm(self, view: View) -> dict[str, bytes]:
        """Check the server's view and seal its digest to every surviving neighbour."""
        self._enter("confirm")
        survivors, dropped = set(view.survivors), set(view.dropped)
        if len(survivors) != len(view.survivors) or len(dropped) != len(view.dropped):
            raise SecAggRefused(f"client {self.me}: the survivor or dropout list repeats a client")
        overlap = survivors & dropped
        if overlap:
            raise SecAggRefused(
                f"client {self.me}: {sorted(overlap)} listed both as survivors and as dropped"
            )
        if self.me not in survivors:
            raise SecAggRefused(f"client {self.me}: not listed among the survivors")
        if len(survivors) < self.setup.min_survivors:
            raise SecAggRefused(
                f"client {self.me}: {len(survivors)} survivors, fewer than the "
                f"{self.setup.min_survivors} whose noise the sum needs; refusing to unmask"
            )
        for other in self._neighbours:
            listed = (other in survivors) + (other in dropped)
            if other in self._shares and listed != 1:
                raise SecAggRefused(
                    f"client {self.me}: neighbour {other} must be a survivor or dropped"
                )
            if other not in self._shares and listed:
                raise SecAggRefused(f"client {self.me}: neighbour {other} never shared keys")
        self._view = view
        seal_view = view.digest(self.setup.context)
        return {
            other: seal(self._channel_keys[other], seal_view, self._ad("confirm", self.me, other))
            for other in self._shares
            if other in survivors
        }

    def unmask(self, confirmations: Mapping[str, bytes]) -> tuple[dict[str, int], dict[str, int]]:
        """After t − 1 matching confirmations: the shares of b_j for surviving neighbours
        and of the mask keys of dropped ones."""
        self._enter("unmask")
        assert self._view is not None
        own = self._view.digest(self.setup.context)
        survivors = set(self._view.survivors)
        agreeing = 0
        for sender, sealed in confirmations.items():
            if sender not in self._shares or sender not in survivors:
                raise SecAggRefused(
                    f"client {self.me}: a confirmation from {sender}, not a surviving neighbour"
                )
            plain = open_sealed(
                self._channel_keys[sender],
                sealed,
                self._ad("confirm", sender, self.me),
                f"client {self.me}: confirmation from {sender}",
            )
            if plain != own:
                raise SecAggRefused(
                    f"client {self.me}: neighbour {sender} was shown a different list of "
                    "survivors and dropouts; refusing to unmask"
                )
            agreeing += 1
        if agreeing + 1 < self.setup.threshold:
            raise SecAggRefused(
                f"client {self.me}: only {agreeing} neighbours confirmed the survivor list, "
                f"{self.setup.threshold - 1} needed"
            )
        b_out = {o: s[0] for o, s in self._shares.items() if o in survivors}
        key_out = {o: s[1] for o, s in self._shares.items() if o in set(self._view.dropped)}
        return b_out, key_out


@dataclass
class _Collected:
    keys: dict[str, PublicKeys] = field(default_factory=dict)
    sealed: dict[str, dict[str, bytes]] = field(default_factory=dict)  # receiver → sender → ct
    sharers: set[str] = field(default_factory=set)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    confirmations: dict[str, dict[str, bytes]] = field(default_factory=dict)  # receiver → sender
    confirmed: set[str] = field(default_factory=set)
    b_shares: dict[str, dict[str, int]] = field(default_factory=dict)  # owner → holder → share
    key_shares: dict[str, dict[str, int]] = field(default_factory=dict)
    unmasked: set[str] = field(default_factory=set)


class SecAggServer:
    """The server's side of one secure round.

    ``cohort`` are the clients invited (``None``: the caller admits clients itself, as
    the deployment server does with its round's tasks); ``degree`` the graph degree k;
    ``graph_seed`` draws the ring order, so that a server that replays the messages it
    stored rebuilds the same round. Each ``receive_*`` validates and records one client's
    message for the open stage; ``close_*`` ends that stage with whoever answered.
    """

    def __init__(
        self, setup: RoundSetup, cohort: Iterable[str] | None, degree: int, graph_seed: int
    ):
        self.setup = setup
        self.cohort = None if cohort is None else frozenset(cohort)
        self.degree = degree
        self.graph_seed = graph_seed
        self.stage = "advertise"
        self.neighbours: dict[str, list[str]] = {}
        self.x: dict[str, int] = {}
        self.view: View | None = None
        self._got = _Collected()

    # --- helpers ------------------------------------------------------------------------

    def _expect(self, stage: str, who: str, members: Iterable[str]) -> None:
        if self.stage != stage:
            raise SecAggRefused(f"the round is at stage {self.stage!r}, not {stage!r}")
        if who not in members:
            raise SecAggRefused(f"client {who} takes no part in stage {stage!r} of this round")

    def _need(self, count: int, stage: str, what: str) -> None:
        t = self.setup.threshold
        if count < t + 1:
            raise SecAggAborted(
                f"secure aggregation aborted at stage {stage!r}: {count} clients {what}, "
                f"at least {t + 1} are needed (threshold {t})"
            )

    @property
    def members(self) -> set[str]:
        """U1: the clients that advertised keys."""
        return set(self._got.keys)

    @property
    def sharers(self) -> set[str]:
        """U2: the clients that shared their secrets."""
        return set(self._got.sharers)

    @property
    def confirmed(self) -> set[str]:
        """U4: the survivors that confirmed the view."""
        return set(self._got.confirmed)

    # --- advertise ----------------------------------------------------------------------

    def receive_keys(self, who: str, keys: PublicKeys) -> None:
        self._expect("advertise", who, self.cohort if self.cohort is not None else {who})
        if who in self._got.keys:
            raise SecAggRefused(f"client {who} already advertised its keys")
        known = {k for pk in self._got.keys.values() for k in (pk.channel, pk.mask)}
        if keys.channel in known or keys.mask in known:
            raise SecAggRefused(f"client {who} advertised a key another client uses")
        self._got.keys[who] = keys

    def close_advertise(self) -> None:
        members = sorted(self._got.keys)
        self._need(len(members), "advertise", "advertised keys")
        self.neighbours = harary_neighbours(members, self.degree, self.graph_seed)
        self.x = {m: i + 1 for i, m in enumerate(members)}
        self.stage = "share"

    def neighbours_of(self, who: str) -> dict[str, Neighbour]:
        return {o: Neighbour(self._got.keys[o], self.x[o]) for o in self.neighbours[who]}

    # --- share --------------------------------------------------------------------------

    def receive_shares(self, who: str, sealed: Mapping[str, bytes]) -> None:
        self._expect("share", who, self._got.keys)
        if who in self._got.sharers:
            raise SecAggRefused(f"client {who} already shared its keys")
        if set(sealed) != set(self.neighbours[who]):
            raise SecAggRefused(
                f"client {who}: shares must go to exactly its {self.degree} neighbours"
            )
        limit = 64 + 2 * SECRET_BYTES
        if any(not isinstance(c, bytes) or len(c) > limit for c in sealed.values()):
            raise SecAggRefused(f"client {who}: a sealed share must be at most {limit} bytes")
        for receiver, ciphertext in sealed.items():
            self._got.sealed.setdefault(receiver, {})[who] = ciphertext
        self._got.sharers.add(who)

    def close_share(self) -> None:
        self._need(len(self._got.sharers), "share", "shared their keys")
        self.stage = "masked"

    def shares_for(self, who: str) -> dict[str, bytes]:
        """The sealed shares addressed to ``who`` by clients in U2."""
        box = self._got.sealed.get(who, {})
        return {s: c for s, c in box.items() if s in self._got.sharers}

    # --- masked -------------------------------------------------------------------------

    def receive_masked(self, who: str, vector: np.ndarray) -> None:
        self._expect("masked", who, self._got.sharers)
        if who in self._got.masked:
            raise SecAggRefused(f"client {who} already sent its masked input")
        setup = self.setup
        if vector.shape != (setup.length,) or vector.dtype != setup.dtype:
            raise SecAggRefused(
                f"client {who}: a masked input must be {setup.length} {setup.dtype} values"
            )
        if setup.modulus_bits not in (32, 64) and bool((vector >> setup.modulus_bits).any()):
            raise SecAggRefused(f"client {who}: masked values must be below 2^{setup.modulus_bits}")
        self._got.masked[who] = vector

    def close_masked(self) -> View:
        survivors = sorted(self._got.masked)
        self._need(len(survivors), "masked", "sent masked inputs")
        if len(survivors) < self.setup.min_survivors:
            raise SecAggAborted(
                f"secure aggregation aborted at stage 'masked': {len(survivors)} clients sent "
                f"masked inputs, the noise of distributed DP needs at least "
                f"{self.setup.min_survivors}; nothing was aggregated"
            )
        dropped = sorted(self._got.sharers - set(survivors))
        self.view = View(tuple(survivors), tuple(dropped))
        self.stage = "confirm"
        return self.view

    # --- confirm ------------------------------------------------------------------------

    def receive_confirmations(self, who: str, sealed: Mapping[str, bytes]) -> None:
        assert self.view is not None
        self._expect("confirm", who, self.view.survivors)
        if who in self._got.confirmed:
            raise SecAggRefused(f"client {who} already confirmed")
        allowed = set(self.neighbours[who]) & set(self.view.survivors)
        if not set(sealed) <= allowed:
            raise SecAggRefused(f"client {who}: confirmations go only to surviving neighbours")
        if any(not isinstance(c, bytes) or len(c) > 128 for c in sealed.values()):
            raise SecAggRefused(f"client {who}: a confirmation must be at most 128 bytes")
        for receiver, ciphertext in sealed.items():
            self._got.confirmations.setdefault(receiver, {})[who] = ciphertext
        self._got.confirmed.add(who)

    def close_confirm(self) -> None:
        self._need(len(self._got.confirmed), "confirm", "confirmed the survivor list")
        self.stage = "unmask"

    def confirmations_for(self, who: str) -> dict[str, bytes]:
        box = self._got.confirmations.get(who, {})
        return {s: c for s, c in box.items() if s in self._got.confirmed}

    # --- unmask -------------------------------------------------------------------------

    def receive_unmask(
        self, who: str, b_shares: Mapping[str, int], key_shares: Mapping[str, int]
    ) -> None:
        assert self.view is not None
        self._expect("unmask", who, self._got.confirmed)
        if who in self._got.unmasked:
            raise SecAggRefused(f"client {who} already sent its shares")
        overlap = set(b_shares) & set(key_shares)
        if overlap:
            raise SecAggRefused(f"client {who}: both secrets of {sorted(overlap)} revealed")
        mine = set(self.neighbours[who])
        if not set(b_shares) <= mine & set(self.view.survivors):
            raise SecAggRefused(f"client {who}: self-mask shares only for surviving neighbours")
        if not set(key_shares) <= mine & set(self.view.dropped):
            raise SecAggRefused(f"client {who}: key shares only for dropped neighbours")
        for owner, share in b_shares.items():
            self._got.b_shares.setdefault(owner, {})[who] = share
        for owner, share in key_shares.items():
            self._got.key_shares.setdefault(owner, {})[who] = share
        self._got.unmasked.add(who)

    def _rebuild(self, owner: str, shares: Mapping[str, int], what: str) -> int:
        t = self.setup.threshold
        if len(shares) < t:
            raise SecAggAborted(
                f"secure aggregation aborted: {len(shares)} shares of client {owner}'s {what} "
                f"arrived, {t} are needed (more dropouts than the round tolerates); "
                "nothing was aggregated"
            )
        points = [(self.x[h], s) for h, s in sorted(shares.items())[:t]]
        return shamir_combine(points)

    def finish(self) -> np.ndarray:
        """Σ_{i∈S} x_i mod 2^b, or :class:`SecAggAborted`."""
        assert self.view is not None
        if self.stage != "unmask":
            raise SecAggRefused(f"the round is at stage {self.stage!r}, not 'unmask'")
        setup = self.setup
        got = self._got
        total = np.zeros(setup.length, dtype=setup.dtype)
        for who in self.view.survivors:
            seed = self._rebuild(who, got.b_shares.get(who, {}), "self-mask seed")
            total += got.masked[who]
            total -= setup.prg(_self_seed(seed, setup.context))
        for gone in self.view.dropped:
            secret = self._rebuild(gone, got.key_shares.get(gone, {}), "mask key")
            pair = KeyPair(secret)
            if pair.public != got.keys[gone].mask:
                raise SecAggAborted(
                    f"secure aggregation aborted: the rebuilt mask key of client {gone} does "
                    "not match its public key (a share was corrupted)"
                )
            for other in self.neighbours[gone]:
                if other not in self.view.survivors:
                    continue
                mask = setup.prg(_pair_seed(pair, got.keys[other].mask, setup.context))
                # the survivor added +mask if other < gone, −mask otherwise: undo it
                if _sign_positive(other, gone):
                    total -= mask
                else:
                    total += mask
        self.stage = "done"
        return setup.reduce(total)
