"""The browser client's SecAgg+ (``web/src/secagg.js``) in real headless Chromium against
fedge's Python implementation: whole rounds with browser and Python clients on one
:class:`SecAggServer`, the mask stream, the Shamir shares, the X25519/HKDF/AES-GCM
primitives, the encoding, and every refusal."""

import itertools
import os

import numpy as np
import pytest
from test_browser_client import b64, browser, chromium, origin, run_js, unb64  # noqa: F401

from fedge.privacy.secagg import RoundPlan, RoundSetup, SecAggClient, SecAggServer, View
from fedge.privacy.secagg.crypto import (
    FIELD_PRIME,
    KeyPair,
    associated_data,
    derive_key,
    digest,
    mask_stream,
    open_sealed,
    seal,
    secret_bytes,
    shamir_combine,
)
from fedge.privacy.secagg.encoding import Segment, VectorCodec
from fedge.privacy.secagg.messages import (
    decode_masked,
    keys_from_json,
    neighbours_from_json,
    neighbours_to_json,
    sealed_from_json,
    sealed_to_json,
    shares_from_json,
    view_from_json,
    view_to_json,
)
from fedge.privacy.secagg.params import GraphParameters
from fedge.privacy.secagg.protocol import CHANNEL

# Every script imports the module and keeps its clients in `window.secagg` between calls.
HEAD = """
const sa = await import("/client/secagg.js");
const box = (window.secagg ??= {});
"""

CREATE = """
const plan = sa.parsePlan(args[0]);
for (const id of args[1]) box[id] = await sa.SecAggClient.create(id, plan);
return true;
"""

# One stage for several browser clients: {id: message} → {id: {ok: answer} or {name, message}}.
STAGE = """
const [stage, messages, bits] = args;
const out = {};
for (const [id, msg] of Object.entries(messages)) {
  try {
    let answer;
    if (stage === "masked") {
      const raw = b64(msg.values);
      const values = bits > 32 ? new BigUint64Array(raw.buffer) : new Uint32Array(raw.buffer);
      answer = to64(await box[id].masked(msg.shares, values));
    } else answer = await box[id][stage](msg);
    out[id] = { ok: answer };
  } catch (e) {
    out[id] = { name: e.name, message: e.message };
  }
}
return out;
"""


def js(driver, body, *args):
    return run_js(driver, HEAD + body, *args)


@pytest.fixture
def page(origin, browser):
    """The browser on a document of ``origin`` (the module itself: no page script runs)."""
    browser.get(origin.url + "/client/secagg.js")
    return browser


def make_plan(bits, length, clients, degree, threshold, context=b"browser secagg test"):
    codec = VectorCodec((Segment("v", length, -1.0, 1.0),), bits, clients)
    setup = RoundSetup(context, threshold, bits, length)
    graph = GraphParameters(clients, degree, threshold)
    return RoundPlan(setup, graph, codec, "uniform", None, None)


def le_bytes(values: np.ndarray) -> bytes:
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


class Mixed:
    """A SecAgg+ round on a :class:`SecAggServer` in this process: the clients in
    ``in_browser`` are the page's (secagg.js), the others Python's; every message crosses in
    its JSON wire form (fedge.privacy.secagg.messages)."""

    def __init__(self, page, plan, cohort, in_browser, *, degree, graph_seed=0):
        self.page, self.plan, self.setup = page, plan, plan.setup
        self.server = SecAggServer(plan.setup, cohort, degree, graph_seed)
        self.in_browser = [c for c in cohort if c in in_browser]
        self.py = {c: SecAggClient(c, plan.setup) for c in cohort if c not in in_browser}
        self.alive = set(cohort)
        self.limit = degree
        rng = np.random.default_rng(1)
        levels = plan.codec.levels
        self.inputs = {
            c: rng.integers(
                0, levels, size=plan.setup.length, endpoint=True, dtype=np.uint64
            ).astype(plan.setup.dtype)
            for c in cohort
        }
        self.keys = {}
        self.done = 0  # stages run
        js(page, CREATE, plan.to_json(), self.in_browser)

    def _message(self, stage, who):
        server = self.server
        if stage == "advertise":
            return None
        if stage == "share":
            return neighbours_to_json(server.neighbours_of(who))
        if stage == "masked":
            return sealed_to_json(server.shares_for(who))
        if stage == "confirm":
            return view_to_json(server.view)
        return sealed_to_json(server.confirmations_for(who))

    def _python(self, stage, who, message):
        client, limit = self.py[who], self.limit
        if stage == "advertise":
            return client.advertise()
        if stage == "share":
            return client.share(neighbours_from_json(message, limit))
        if stage == "masked":
            return client.masked(sealed_from_json(message, "shares", limit), self.inputs[who])
        if stage == "confirm":
            return client.confirm(view_from_json(message, self.plan.codec.max_clients))
        return client.unmask(sealed_from_json(message, "confirmations", limit))

    def _from_browser(self, stage, answer):
        if stage == "advertise":
            return keys_from_json(answer)
        if stage in ("share", "confirm"):
            return sealed_from_json(answer, stage, self.limit)
        if stage == "masked":
            return decode_masked(unb64(answer), self.setup)
        for shares in answer.values():  # lowercase hex without padding, as format(s, "x")
            assert all(text == format(int(text, 16), "x") for text in shares.values())
        return shares_from_json(answer, self.limit)

    def stage(self, stage, *, tamper=None, drop=()):
        """Run ``stage`` for every client still in the round but ``drop``; ``tamper`` maps
        a browser client to a function of the JSON it receives. The browser clients'
        refusals are returned (and they leave the round); the others' answers go to the
        server, which closes the stage."""
        self.alive -= set(drop)
        self.done += 1
        messages = {c: self._message(stage, c) for c in sorted(self.alive)}
        for who, change in (tamper or {}).items():
            messages[who] = change(messages[who])
        to_js = {c: messages[c] for c in self.in_browser if c in self.alive}
        if stage == "masked":
            to_js = {
                c: {"shares": m, "values": b64(le_bytes(self.inputs[c]))} for c, m in to_js.items()
            }
        results = js(self.page, STAGE, stage, to_js, self.setup.modulus_bits) if to_js else {}
        refused = {}
        for who in sorted(self.alive):
            if who in results:
                if "ok" not in results[who]:
                    refused[who] = results[who]
                    continue
                answer = self._from_browser(stage, results[who]["ok"])
            else:
                answer = self._python(stage, who, messages[who])
            self._send(stage, who, answer)
        self.alive -= set(refused)
        if not refused:
            self._close(stage)
        return refused

    def _send(self, stage, who, answer):
        server = self.server
        if stage == "advertise":
            self.keys[who] = answer
            server.receive_keys(who, answer)
        elif stage == "share":
            server.receive_shares(who, answer)
        elif stage == "masked":
            server.receive_masked(who, answer)
        elif stage == "confirm":
            server.receive_confirmations(who, answer)
        else:
            server.receive_unmask(who, *answer)

    def _close(self, stage):
        close = {
            "advertise": self.server.close_advertise,
            "share": self.server.close_share,
            "masked": self.server.close_masked,
            "confirm": self.server.close_confirm,
        }.get(stage)
        if close is not None:
            close()

    def until(self, last):
        """The stages not yet run before ``last``, without refusals."""
        stages = ("advertise", "share", "masked", "confirm", "unmask")
        for stage in stages[self.done : stages.index(last)]:
            assert self.stage(stage) == {}, f"refused at {stage}"


# --- a whole round ------------------------------------------------------------------------


# U+FFFD sorts before U+1F600 in Python (code points) but after it in UTF-16 units: the
# pair's mask signs and the view digest must follow Python's order.
HIGH, ASTRAL = "c\ufffd", "c\U0001f600"


@pytest.mark.parametrize(("bits", "dropped"), [(32, "c2"), (24, "c3"), (64, ASTRAL)])
def test_a_round_of_browser_and_python_clients_sums_exactly(page, bits, dropped):
    """Six clients on a sparse graph (degree 4, threshold 2), three of them in the browser;
    one drops after sharing its keys: the server unmasks the survivors' exact sum."""
    cohort = ["c0", "c1", "c2", "c3", HIGH, ASTRAL]
    plan = make_plan(bits, 1001, 6, degree=4, threshold=2)
    round = Mixed(page, plan, cohort, {"c1", "c2", ASTRAL}, degree=4, graph_seed=7)
    for stage in ("advertise", "share"):
        assert round.stage(stage) == {}
    # a sparse graph: some pairs never mask with each other
    assert all(len(n) == 4 for n in round.server.neighbours.values())
    assert ASTRAL in round.server.neighbours[HIGH]
    for stage in ("masked", "confirm", "unmask"):
        assert round.stage(stage, drop={dropped} if stage == "masked" else ()) == {}
    survivors = sorted(set(cohort) - {dropped})
    assert round.server.view == View(tuple(survivors), (dropped,))
    masked = round.server._got.masked
    assert all(not np.array_equal(masked[c], round.inputs[c]) for c in survivors)
    total = round.server.finish()  # rebuilds the dropped client's mask key: it must match
    expected = [sum(int(round.inputs[c][i]) for c in survivors) % 2**bits for i in range(1001)]
    assert total.dtype == plan.setup.dtype
    assert total.tolist() == expected


# --- the primitives -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64, 24, 40])
def test_mask_stream_equals_python(page, bits):
    seed = os.urandom(32)
    length = 1027  # > 256 AES blocks: the counter carries beyond its last byte
    out = js(
        page,
        """
        const values = await sa.maskStream(b64(args[0]), args[1], args[2]);
        return to64(new Uint8Array(values.buffer));
        """,
        b64(seed),
        length,
        bits,
    )
    setup = RoundSetup(b"ctx", 2, bits, length)
    got = np.frombuffer(unb64(out), dtype=setup.dtype.newbyteorder("<"))
    assert np.array_equal(got, setup.prg(seed))
    if bits in (32, 64):
        assert np.array_equal(got, mask_stream(seed, length, setup.dtype))


def test_shamir_shares_are_rebuilt_by_python(page):
    secret = int.from_bytes(os.urandom(32), "little") % FIELD_PRIME
    xs, threshold = [1, 2, 5, 7, 11], 3
    runs = [
        [
            int(s, 16)
            for s in js(
                page,
                """
                const shares = sa.shamirSplit(BigInt("0x" + args[0]), args[1].map(BigInt), args[2]);
                return shares.map((s) => s.toString(16));
                """,
                format(secret, "x"),
                xs,
                threshold,
            )
        ]
        for _ in range(2)
    ]
    assert runs[0] != runs[1]  # fresh random coefficients each time
    for shares in runs:
        assert all(0 <= s < FIELD_PRIME for s in shares)
        points = list(zip(xs, shares, strict=True))
        for k in range(threshold, len(xs) + 1):
            for subset in itertools.combinations(points, k):
                assert shamir_combine(subset) == secret
        for subset in itertools.combinations(points, threshold - 1):
            assert shamir_combine(subset) != secret


def test_keys_channel_keys_and_ciphertexts_equal_python(page):
    """X25519 with a field-element private key, HKDF, the associated data, the digest and
    AES-GCM in both directions."""
    mine, theirs = KeyPair(), KeyPair()
    context = os.urandom(20)
    ad = associated_data(context, "share", "dévice-1", "d2")
    python_sealed = seal(b"k" * 32, b"from python", ad)
    out = js(
        page,
        """
        const [secret, peer, context, sealed] = args;
        const pair = await sa.KeyPair.create(BigInt("0x" + secret));
        const key = await sa.deriveKey(await pair.agree(b64(peer)), b64(context),
                                       new TextEncoder().encode("fedge secagg channel v1"));
        const ad = sa.associatedData(b64(context), "share", "dévice-1", "d2");
        const aes = new TextEncoder().encode("k".repeat(32));
        const opened = await sa.openSealed(aes, b64(sealed), ad, "test");
        return {
          public: to64(pair.public),
          key: to64(key),
          ad: to64(ad),
          digest: to64(await sa.digest(b64(context), "view", "a", "|", "b")),
          opened: new TextDecoder().decode(opened),
          sealed: to64(await sa.seal(key, new TextEncoder().encode("from the browser"), ad)),
        };
        """,
        format(mine.secret, "x"),
        b64(theirs.public),
        b64(context),
        b64(python_sealed),
    )
    assert unb64(out["public"]) == mine.public
    key = derive_key(theirs.agree(mine.public), context, CHANNEL)
    assert unb64(out["key"]) == key
    assert unb64(out["ad"]) == ad
    assert unb64(out["digest"]) == digest(context, "view", "a", "|", "b")
    assert out["opened"] == "from python"
    assert open_sealed(key, unb64(out["sealed"]), ad, "test") == b"from the browser"


# --- the encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 40])
def test_encode_quantizes_clips_and_rounds_without_bias(page, bits):
    levels = ((1 << bits) - 1) // 3
    rng = np.random.default_rng(5)
    grid_ints = rng.integers(0, levels, size=50, endpoint=True)
    k1, k2 = int(rng.integers(0, levels - 1)), int(rng.integers(0, levels - 1))
    step = 2.0 / levels
    segments = (
        Segment("grid", 50, -1024.0, levels - 1024.0),  # step 1: the grid is the integers
        Segment("clip", 6, 0.0, 1.0),
        Segment("wide", 4000, -1.0, 1.0),
    )
    codec = VectorCodec(segments, bits, 3)
    plan = RoundPlan(
        RoundSetup(b"c", 2, bits, codec.length),
        GraphParameters(3, 2, 2),
        codec,
        "uniform",
        None,
        None,
    )
    parts = {
        "grid": (grid_ints - 1024.0).tolist(),
        "clip": [-5.0, -1e-9, 0.0, 1.0, 1.0 + 1e-9, 7.0],
        "wide": [-1.0 + (k1 + 0.3) * step] * 2000 + [-1.0 + (k2 + 0.85) * step] * 2000,
    }
    out = js(
        page,
        """
        const plan = sa.parsePlan(args[0]);
        const parts = {};
        for (const [name, list] of Object.entries(args[1])) parts[name] = Float64Array.from(list);
        const { values, clipped } = sa.encode(plan, parts);
        const type = values.constructor.name;
        return { values: to64(new Uint8Array(values.buffer)), clipped, type };
        """,
        plan.to_json(),
        parts,
    )
    assert out["type"] == ("BigUint64Array" if bits > 32 else "Uint32Array")
    ints = np.frombuffer(unb64(out["values"]), dtype=codec.dtype.newbyteorder("<")).astype(
        codec.dtype
    )
    assert ints.shape == (codec.length,)
    grid, clip, wide = ints[:50], ints[50:56], ints[56:]
    assert grid.tolist() == grid_ints.tolist()
    assert out["clipped"] == 4
    assert clip.tolist() == [0, 0, 0, levels, levels, levels]
    for ints_k, k, frac in ((wide[:2000], k1, 0.3), (wide[2000:], k2, 0.85)):
        assert set(ints_k.tolist()) <= {k, k + 1}  # never more than one level off
        error = np.sqrt(frac * (1 - frac) / len(ints_k))
        assert abs(ints_k.astype(np.float64).mean() - (k + frac)) < 5 * error
    decoded = codec.decode(ints, 1)
    for seg in segments:
        values = np.clip(np.asarray(parts[seg.name]), seg.lo, seg.hi)
        assert np.all(np.abs(decoded[seg.name].numpy() - values) <= codec.step(seg) * (1 + 1e-9))


def test_encode_refuses_bad_parts(page):
    plan = make_plan(32, 3, 3, 2, 2)
    out = js(
        page,
        """
        const plan = sa.parsePlan(args[0]);
        const cases = [{ v: [0, NaN, 1] }, { v: [0, Infinity, 1] }, { v: [0, 1] }, { w: [0] }];
        const out = [];
        for (const parts of cases) {
          try {
            sa.encode(plan, parts);
            out.push("encoded");
          } catch (e) {
            out.push(e.message);
          }
        }
        return out;
        """,
        plan.to_json(),
    )
    assert "holds NaN or Inf" in out[0] and "holds NaN or Inf" in out[1]
    assert "2 values, expected 3" in out[2]
    assert "no values given" in out[3]


# --- the plan -----------------------------------------------------------------------------


def test_plan_is_parsed_and_malformed_plans_are_refused(page):
    plan = make_plan(40, 7, 5, 4, 3).to_json()
    dp = {**plan, "distributed_dp": {"clip_norm": 1.0, "scale": 10.0}}
    bad = [
        {**plan, "modulus_bits": 65},
        {**plan, "modulus_bits": 7},
        {**plan, "threshold": 1},
        {**plan, "context": "zz"},
        {**plan, "segments": [["v", 7, 1.0, 1.0]]},
        {**plan, "max_clients": 2**40},
        "not a plan",
    ]
    out = js(
        page,
        """
        const attempt = (json) => {
          try {
            const plan = sa.parsePlan(json);
            return { ...plan, context: to64(plan.context), levels: String(plan.levels) };
          } catch (e) {
            return { name: e.name, message: e.message };
          }
        };
        return { plan: attempt(args[0]), dp: attempt(args[1]), bad: args[2].map(attempt) };
        """,
        plan,
        dp,
        bad,
    )
    parsed = out["plan"]
    assert unb64(parsed["context"]) == b"browser secagg test"
    assert (parsed["bits"], parsed["threshold"], parsed["degree"], parsed["maxClients"]) == (
        40,
        3,
        4,
        5,
    )
    assert parsed["levels"] == str(((1 << 40) - 1) // 5) and parsed["length"] == 7
    assert parsed["segments"] == [{"name": "v", "length": 7, "lo": -1, "hi": 1}]
    assert parsed["maxWeight"] is None and parsed["clipNorm"] is None
    # distributed DP over a segment that is not the delta (test_browser_skellam.py parses
    # whole distributed-DP plans)
    assert out["dp"]["name"] == "SecAggUnsupported"
    assert "exactly one segment, the delta, under distributed DP" in out["dp"]["message"]
    assert all(b["name"] == "SecAggUnsupported" for b in out["bad"]), out["bad"]


# --- refusals ---------------------------------------------------------------------------


def small_round(page, bits=32):
    """The browser client j and Python clients p1, p2, p3 on a complete graph, t = 2."""
    cohort = ["j", "p1", "p2", "p3"]
    return Mixed(page, make_plan(bits, 5, 4, 3, 2), cohort, {"j"}, degree=3)


def refused(result, name="SecAggRefused"):
    assert set(result) == {"j"}, result
    assert result["j"]["name"] == name, result
    return result["j"]["message"]


def test_stages_out_of_order_are_refused(page):
    plan = make_plan(32, 5, 4, 3, 2)
    out = js(
        page,
        """
        const client = await sa.SecAggClient.create("j", sa.parsePlan(args[0]));
        const errors = [];
        for (const call of [() => client.masked({}, new Uint32Array(5)), () => client.advertise(),
                            () => client.advertise(), () => client.unmask({})]) {
          try {
            await call();
            errors.push(null);
          } catch (e) {
            errors.push([e.name, e.message]);
          }
        }
        return errors;
        """,
        plan.to_json(),
    )
    assert out[0] == ["SecAggRefused", "client j: asked for stage 'masked', expected 'advertise'"]
    assert out[1] is None
    assert out[2] == ["SecAggRefused", "client j: asked for stage 'advertise', expected 'share'"]
    assert out[3] == ["SecAggRefused", "client j: asked for stage 'unmask', expected 'share'"]


def _with(message, **changes):
    return {**message, **changes}


def _swap(message, old, new):
    """``message`` with the entry of ``old`` under the name ``new``."""
    out = {k: v for k, v in message.items() if k != old}
    out[new] = message[old]
    return out


SHARE_CASES = {
    "own id": (lambda m: _swap(m, "p1", "j"), "listed as its own neighbour"),
    "too many": (lambda m: _with(m, zz=m["p1"]), "neighbours must be an object with at most 3"),
    "too few": (lambda m: {"p1": m["p1"]}, "1 neighbours cannot hold a 2-out-of-n share"),
    "same x": (lambda m: _with(m, p2={**m["p2"], "x": m["p1"]["x"]}), "distinct and nonzero"),
    "zero x": (lambda m: _with(m, p1={**m["p1"], "x": 0}), "x must be a positive integer"),
    "float x": (lambda m: _with(m, p1={**m["p1"], "x": 1.5}), "x must be a positive integer"),
    "string x": (lambda m: _with(m, p1={**m["p1"], "x": "1"}), "x must be a positive integer"),
    "short key": (
        lambda m: _with(m, p1={**m["p1"], "mask": b64(bytes(31))}),
        "the mask public key must be 32 bytes",
    ),
    "bad base64": (
        lambda m: _with(m, p1={**m["p1"], "channel": "not base64!"}),
        "channel key is not valid base64",
    ),
    "same keys": (
        lambda m: _with(m, p1={**m["p1"], "mask": m["p1"]["channel"]}),
        "the channel and mask public keys must differ",
    ),
    "not an object": (lambda m: [1, 2], "neighbours must be an object"),
    "low-order key": (
        lambda m: _with(m, p1={**m["p1"], "channel": b64(bytes(32))}),
        "invalid X25519 public key",
    ),
}


@pytest.mark.parametrize("case", list(SHARE_CASES))
def test_a_malformed_neighbour_list_is_refused(page, case):
    change, message = SHARE_CASES[case]
    round = small_round(page)
    round.until("share")
    assert message in refused(round.stage("share", tamper={"j": change}))


def _reseal(round, sender, plain, stage="share", context=None):
    """``plain`` sealed by the Python client ``sender`` to j under their channel key (or,
    with ``context``, under the key and associated data of another round)."""
    client = round.py[sender]
    if context is None:
        key, context = client._channel_keys["j"], round.setup.context
    else:
        key = derive_key(client._channel.agree(round.keys["j"].channel), context, CHANNEL)
    return b64(seal(key, plain, associated_data(context, stage, sender, "j")))


def _flip(text):
    raw = bytearray(unb64(text))
    raw[20] ^= 1
    return b64(bytes(raw))


MASKED_CASES = {
    "tampered": (lambda r, m: _with(m, p1=_flip(m["p1"])), "share from p1: authentication failed"),
    "replayed": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", bytes(64), context=b"another round")),
        "share from p1: authentication failed",
    ),
    "other stage": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", bytes(64), stage="confirm")),
        "share from p1: authentication failed",
    ),
    "redirected": (lambda r, m: _with(m, p1=m["p2"]), "share from p1: authentication failed"),
    "not a neighbour": (
        lambda r, m: _swap(m, "p2", "zz"),
        "a share from zz, not a neighbour",
    ),
    "malformed": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", bytes(63))),
        "malformed share from p1",
    ),
    "outside the field": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", secret_bytes(FIELD_PRIME) + bytes(32))),
        "share from p1 outside the field",
    ),
    "short": (lambda r, m: _with(m, p1=b64(bytes(27))), "share from p1: ciphertext too short"),
    "bad base64": (lambda r, m: _with(m, p1="@@@@"), "shares for p1 is not valid base64"),
}


def test_too_few_shares_abort(page):
    round = small_round(page)
    round.until("masked")
    result = round.stage("masked", tamper={"j": lambda m: {"p1": m["p1"]}})
    assert "only 1 neighbours shared keys, 2 are needed" in refused(result, "SecAggAborted")


def _view(survivors, dropped):
    return lambda r, m: {"survivors": survivors, "dropped": dropped}


CONFIRM_CASES = {
    "overlap": (
        _view(["j", "p1", "p2", "p3"], ["p1"]),
        'client j: ["p1"] listed both as survivors and as dropped',
    ),
    "self dropped": (_view(["p1", "p2", "p3"], ["j"]), "client j: not listed among the survivors"),
    "repeat": (_view(["j", "p1", "p1", "p2"], []), "the survivor or dropout list repeats"),
    "unaccounted": (_view(["j", "p1", "p2"], []), "neighbour p3 must be a survivor or dropped"),
    "not a list": (_view("j", []), "survivors must be a list"),
}


def test_a_view_listing_a_neighbour_that_never_shared_is_refused(page):
    round = small_round(page)
    round.until("share")
    assert round.stage("share", drop={"p3"}) == {}
    round.until("confirm")
    result = round.stage(
        "confirm", tamper={"j": lambda m: {"survivors": ["j", "p1", "p2"], "dropped": ["p3"]}}
    )
    assert "neighbour p3 never shared keys" in refused(result)


def _other_view(round):
    return View(("j", "p1", "p2"), ("p3",)).digest(round.setup.context)


UNMASK_CASES = {
    "different view": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", _other_view(r), stage="confirm")),
        "neighbour p1 was shown a different list of survivors and dropouts",
    ),
    "tampered": (
        lambda r, m: _with(m, p1=_flip(m["p1"])),
        "confirmation from p1: authentication failed",
    ),
    "share replayed": (
        lambda r, m: _with(m, p1=_reseal(r, "p1", r.setup.context, stage="share")),
        "confirmation from p1: authentication failed",
    ),
    "not a survivor": (
        lambda r, m: _swap(m, "p2", "zz"),
        "a confirmation from zz, not a surviving neighbour",
    ),
    "too few": (lambda r, m: {}, "only 0 neighbours confirmed the survivor list, 1 needed"),
}


BAD_MESSAGES = {"masked": MASKED_CASES, "confirm": CONFIRM_CASES, "unmask": UNMASK_CASES}


@pytest.mark.parametrize(
    ("stage", "case"), [(stage, case) for stage, cases in BAD_MESSAGES.items() for case in cases]
)
def test_a_bad_message_is_refused(page, stage, case):
    """At ``masked`` a bad share, at ``confirm`` a bad view, at ``unmask`` a bad
    confirmation: each refused with its reason."""
    change, message = BAD_MESSAGES[stage][case]
    round = small_round(page)
    round.until(stage)
    assert message in refused(round.stage(stage, tamper={"j": lambda m: change(round, m)}))


def test_a_refusing_client_takes_no_further_part(page):
    round = small_round(page)
    round.until("masked")
    refused(round.stage("masked", tamper={"j": lambda m: _with(m, p1=_flip(m["p1"]))}))
    out = js(
        page,
        """
        try {
          await box.j.confirm({ survivors: ["j"], dropped: [] });
          return null;
        } catch (e) {
          return [e.name, e.message];
        }
        """,
    )
    assert out[0] == "SecAggRefused" and "takes no further part" in out[1]
