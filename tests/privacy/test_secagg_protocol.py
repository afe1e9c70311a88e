"""SecAgg+ itself: parameters against Google's finder, Shamir, the exact sum under every
dropout set of a small cohort, quantization error, uniform-looking masks, and each message
the protocol must refuse."""

import itertools
import math

import numpy as np
import pytest
import torch

from fedge.errors import ConfigError
from fedge.privacy.secagg import (
    RoundSetup,
    SecAggAborted,
    SecAggClient,
    SecAggRefused,
    SecAggServer,
    View,
    find_parameters,
    run_in_process,
)
from fedge.privacy.secagg.crypto import (
    FIELD_PRIME,
    associated_data,
    mask_stream,
    open_sealed,
    seal,
    shamir_combine,
    shamir_split,
)
from fedge.privacy.secagg.encoding import Segment, VectorCodec
from fedge.privacy.secagg.params import harary_neighbours

# (n, corrupt, dropout, adversary, k, t) from federated-compute's
# graph_parameter_finder_test.cc: k must match, t must not exceed theirs.
GOOGLE = [
    (100, 0.45, 0.45, "curious", 92, 46),
    (10, 0.33, 0.33, "curious", 8, 4),
    (100, 0.33, 0.33, "curious", 68, 34),
    (1000, 0.33, 0.33, "curious", 286, 150),
    (10000, 0.33, 0.33, "curious", 422, 221),
    (100, 0.05, 0.33, "curious", 28, 6),
    (1000, 0.05, 0.33, "curious", 72, 24),
    (100000, 0.05, 0.33, "curious", 96, 32),
    (1000, 0.33, 0.05, "curious", 78, 60),
    (100, 0.3, 0.3, "semi-malicious", 92, 62),
    (1000, 0.05, 0.33, "semi-malicious", 398, 223),
    (100, 0.33, 0.05, "semi-malicious", 42, 37),
    (1000, 0.33, 0.05, "semi-malicious", 132, 109),
]


@pytest.mark.parametrize(("n", "corrupt", "dropout", "adversary", "k", "t"), GOOGLE)
def test_degree_and_threshold_match_googles_parameter_finder(n, corrupt, dropout, adversary, k, t):
    found = find_parameters(n, dropout=dropout, corrupt=corrupt, adversary=adversary)
    assert found.degree == k
    assert 2 <= found.threshold <= t


def test_small_cohorts_keep_the_correctness_bound_where_google_drops_it():
    # Google's finder answers k=4, t=2 for 10 clients (5% corrupt, 33% dropouts). With 7
    # survivors, a client keeps fewer than t=2 of its 4 neighbours with probability
    # C(7,1)·C(3,3)/C(10,4) = 7/210, far above the 2^-20/n target: fedge takes k=6.
    assert math.comb(7, 1) * math.comb(3, 3) / math.comb(10, 4) > 2**-20 / 10
    found = find_parameters(10, dropout=0.33, corrupt=0.05)
    assert (found.degree, found.threshold) == (6, 2)
    # with k=6 at most 3 of a client's 6 neighbours can drop: at least 3 >= t survive


def test_infeasible_threat_models_are_refused():
    with pytest.raises(ConfigError, match=r"at most 0\.9"):
        find_parameters(100, dropout=0.6, corrupt=0.4)
    with pytest.raises(ConfigError, match="dropout counts twice"):
        find_parameters(100, dropout=0.45, corrupt=0.05, adversary="semi-malicious")
    with pytest.raises(ConfigError, match="at least 3"):
        find_parameters(2)


def test_harary_graph_is_regular_symmetric_and_complete_when_dense():
    members = [f"c{i}" for i in range(11)]
    graph = harary_neighbours(members, 4, seed=3)
    assert all(len(v) == 4 and m not in v for m, v in graph.items())
    assert all(m in graph[o] for m, v in graph.items() for o in v)
    assert harary_neighbours(members, 4, seed=3) == graph  # the seed decides
    complete = harary_neighbours(members, 10, seed=0)
    assert all(set(v) == set(members) - {m} for m, v in complete.items())


def test_shamir_any_t_shares_rebuild_and_fewer_do_not():
    secret = 123456789 * 10**60 % FIELD_PRIME
    xs = list(range(1, 8))
    shares = shamir_split(secret, xs, 3)
    for subset in itertools.combinations(zip(xs, shares, strict=True), 3):
        assert shamir_combine(subset) == secret
    assert shamir_combine(list(zip(xs, shares, strict=True))[:2]) != secret


def test_sealed_messages_are_bound_to_their_associated_data():
    key = bytes(range(32))
    ad = associated_data(b"round-1", "share", "a", "b")
    sealed = seal(key, b"secret", ad)
    assert open_sealed(key, sealed, ad, "test") == b"secret"
    for other in (
        associated_data(b"round-2", "share", "a", "b"),
        associated_data(b"round-1", "confirm", "a", "b"),
        associated_data(b"round-1", "share", "a", "c"),
    ):
        with pytest.raises(SecAggRefused, match="authentication failed"):
            open_sealed(key, sealed, other, "test")


def test_masks_are_the_aes_256_ctr_keystream_from_a_zero_counter():
    # Built independently: AES-256 of the big-endian counter blocks 0, 1, 2, … (ECB, one
    # block at a time), which the browser client's WebCrypto AES-CTR must reproduce too.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(100, 132))
    block = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    stream = b"".join(block.update(i.to_bytes(16, "big")) for i in range(5))
    assert mask_stream(seed, 20, np.uint32).tolist() == np.frombuffer(stream, "<u4").tolist()
    assert mask_stream(seed, 10, np.uint64).tolist() == np.frombuffer(stream, "<u8").tolist()
    assert mask_stream(bytes(32), 4, np.uint32).tolist() != mask_stream(seed, 4, np.uint32).tolist()


# --- the protocol under every dropout set -----------------------------------------------

N, DEGREE, T, LENGTH = 6, 4, 2, 24
IDS = [f"c{i}" for i in range(N)]


def _inputs(seed=0, bits=16):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 2**bits, LENGTH, dtype=np.uint64).astype(np.uint32) for c in IDS}


def _tolerated(graph, survivors, dropped, responders):
    """Whether every secret the server must rebuild has t responding holders."""
    if min(len(survivors) + len(dropped), len(survivors), len(responders)) < T + 1:
        return False
    return all(len(set(graph[c]) & responders) >= T for c in list(survivors) + list(dropped))


@pytest.mark.parametrize("stage", ["masked", "unmask"])
def test_sum_is_exact_for_every_tolerated_dropout_set_and_aborts_otherwise(stage):
    setup = RoundSetup(b"enumerate", T, 32, LENGTH)
    inputs = _inputs()
    graph = harary_neighbours(IDS, DEGREE, seed=1)
    outcomes = {"exact": 0, "aborted": 0}
    for size in range(N + 1):
        for gone in itertools.combinations(IDS, size):
            gone = set(gone)
            if stage == "masked":
                survivors, dropped, responders = set(IDS) - gone, gone, set(IDS) - gone
            else:  # their masked inputs count, but they never reveal shares
                survivors, dropped, responders = set(IDS), set(), set(IDS) - gone
            expected_ok = _tolerated(graph, survivors, dropped, responders)
            try:
                total, view, _ = run_in_process(
                    setup, inputs, degree=DEGREE, graph_seed=1, drop_before={stage: gone}
                )
            except SecAggAborted:
                assert not expected_ok, f"aborted although {sorted(gone)} is tolerated"
                outcomes["aborted"] += 1
                continue
            assert expected_ok, f"completed although {sorted(gone)} is not tolerated"
            assert set(view.survivors) == survivors
            reference = sum(int(inputs[c][i]) for c in survivors for i in [0])  # scalar check
            exact = np.zeros(LENGTH, dtype=np.uint64)
            for c in survivors:
                exact += inputs[c]
            assert int(total[0]) == reference % 2**32
            np.testing.assert_array_equal(total.astype(np.uint64), exact % 2**32)
            outcomes["exact"] += 1
    assert outcomes["exact"] > 10 and outcomes["aborted"] > 10


def test_sum_wraps_modulo_a_small_modulus():
    setup = RoundSetup(b"wrap", T, 12, LENGTH)
    inputs = {c: (v % 4096).astype(np.uint32) for c, v in _inputs(bits=12).items()}
    total, _, _ = run_in_process(setup, inputs, degree=DEGREE)
    exact = sum(v.astype(np.int64) for v in inputs.values()) % 4096
    np.testing.assert_array_equal(total.astype(np.int64), exact)


def test_quantization_error_stays_within_the_bound_and_is_unbiased():
    seg = Segment("delta", 2000, -0.5, 0.5)
    codec = VectorCodec((seg,), bits=32, max_clients=8)
    rng = np.random.default_rng(0)
    values = [torch.from_numpy(rng.uniform(-0.7, 0.7, 2000)) for _ in range(5)]
    clipped_ref = [v.clamp(-0.5, 0.5) for v in values]
    encoded = [codec.encode({"delta": v}, rng) for v in values]
    assert sum(e.clipped for e in encoded) == sum(int((v.abs() > 0.5).sum()) for v in values)
    total = sum(e.values.astype(np.uint64) for e in encoded)
    assert int(total.max()) < 2**32  # n·L < 2^b: no wrap
    decoded = codec.decode(total, 5)["delta"]
    step = 1.0 / ((2**32 - 1) // 8)
    err = (decoded - sum(clipped_ref)).abs().max().item()
    assert err <= 5 * step
    # unbiased: a value halfway between two levels rounds up half the time
    wide = VectorCodec((Segment("delta", 20000, -0.5, 0.5),), bits=32, max_clients=8)
    half = torch.full((20000,), -0.5 + 0.5 * step, dtype=torch.float64)
    ups = wide.encode({"delta": half}, rng).values.mean()
    assert ups == pytest.approx(0.5, abs=0.02)


def test_masked_vectors_look_uniform_although_the_input_is_constant():
    length = 1 << 16
    setup = RoundSetup(b"uniform", 2, 32, length)
    inputs = {c: np.full(length, 7, dtype=np.uint32) for c in IDS[:4]}
    clients = {c: SecAggClient(c, setup) for c in inputs}
    server = SecAggServer(setup, inputs, degree=3, graph_seed=0)
    for c, client in clients.items():
        server.receive_keys(c, client.advertise())
    server.close_advertise()
    for c, client in clients.items():
        server.receive_shares(c, client.share(server.neighbours_of(c)))
    server.close_share()
    masked = clients["c0"].masked(server.shares_for("c0"), inputs["c0"])

    def chi_square(values):
        counts = np.bincount((values >> 24).astype(np.int64), minlength=256)
        expected = len(values) / 256
        return float(((counts - expected) ** 2 / expected).sum())

    # 255 degrees of freedom: mean 255, sd ≈ 22.6; 400 is beyond 6 sd
    assert chi_square(masked) < 400
    assert chi_square(inputs["c0"]) > 400  # the same test does see a non-uniform vector
    assert not np.any(masked == inputs["c0"]).all()


# --- refusals ------------------------------------------------------------------------------


def _through_share(context=b"refusals", ids=IDS, degree=DEGREE):
    setup = RoundSetup(context, T, 32, LENGTH)
    clients = {c: SecAggClient(c, setup) for c in ids}
    server = SecAggServer(setup, ids, degree=degree, graph_seed=2)
    for c, client in clients.items():
        server.receive_keys(c, client.advertise())
    server.close_advertise()
    for c, client in clients.items():
        server.receive_shares(c, client.share(server.neighbours_of(c)))
    server.close_share()
    return setup, clients, server


def _through_masked(inputs):
    _, clients, server = _through_share()
    for c, client in clients.items():
        server.receive_masked(c, client.masked(server.shares_for(c), inputs[c]))
    view = server.close_masked()
    return clients, server, view


def test_a_view_listing_a_client_as_survivor_and_dropped_is_refused():
    inputs = _inputs()
    clients, server, view = _through_masked(inputs)
    victim = server.neighbours["c0"][0]
    overlapping = View(view.survivors, (victim,))
    with pytest.raises(SecAggRefused, match="both as survivors and as dropped"):
        clients["c0"].confirm(overlapping)


def test_inconsistent_views_stop_unmasking():
    inputs = _inputs()
    clients, server, view = _through_masked(inputs)
    neighbour = server.neighbours["c0"][0]
    # the one client that is not the neighbour's neighbour: the neighbour cannot tell
    # from what it knows that the server lies about it
    (other,) = set(IDS) - set(server.neighbours[neighbour]) - {neighbour}
    assert other != "c0"
    lie = View(tuple(c for c in view.survivors if c != other), (other,))
    lied = clients[neighbour].confirm(lie)
    clients["c0"].confirm(view)
    with pytest.raises(SecAggRefused, match="different list"):
        clients["c0"].unmask({neighbour: lied["c0"]})


def test_a_tampered_share_is_refused():
    _, clients, server = _through_share()
    box = dict(server.shares_for("c0"))
    sender = next(iter(box))
    flipped = bytearray(box[sender])
    flipped[20] ^= 1
    box[sender] = bytes(flipped)
    with pytest.raises(SecAggRefused, match="authentication failed"):
        clients["c0"].masked(box, _inputs()["c0"])


def test_a_share_replayed_from_an_earlier_round_is_refused():
    # the same client pair in two rounds: round 1's ciphertext presented in round 2
    _, _, server1 = _through_share(context=b"round-1")
    _, clients2, server2 = _through_share(context=b"round-2")
    box = dict(server2.shares_for("c0"))
    sender = next(iter(box))
    earlier = server1.shares_for("c0")
    box[sender] = earlier.get(sender, next(iter(earlier.values())))
    with pytest.raises(SecAggRefused, match="authentication failed"):
        clients2["c0"].masked(box, _inputs()["c0"])


def test_a_share_from_a_non_neighbour_is_refused():
    ids = [f"c{i}" for i in range(7)]
    _, clients, server = _through_share(ids=ids, degree=2)
    stranger = next(c for c in ids if c != "c0" and c not in server.neighbours["c0"])
    box = dict(server.shares_for("c0"))
    box[stranger] = next(iter(box.values()))
    with pytest.raises(SecAggRefused, match="not a neighbour"):
        clients["c0"].masked(box, np.zeros(LENGTH, dtype=np.uint32))


def test_the_server_refuses_what_breaks_the_protocol():
    setup = RoundSetup(b"server", T, 16, LENGTH)
    clients = {c: SecAggClient(c, setup) for c in IDS}
    server = SecAggServer(setup, IDS, degree=DEGREE, graph_seed=0)
    keys = clients["c0"].advertise()
    server.receive_keys("c0", keys)
    with pytest.raises(SecAggRefused, match="already advertised"):
        server.receive_keys("c0", keys)
    with pytest.raises(SecAggRefused, match="another client uses"):
        server.receive_keys("c1", keys)
    with pytest.raises(SecAggRefused, match="takes no part"):
        server.receive_keys("intruder", SecAggClient("intruder", setup).advertise())
    for c in IDS[1:]:
        server.receive_keys(c, clients[c].advertise())
    with pytest.raises(SecAggRefused, match="stage 'advertise'"):
        server.receive_shares("c0", {})
    server.close_advertise()
    with pytest.raises(SecAggRefused, match="exactly its"):
        server.receive_shares("c0", {"c1": b"x" * 40})
    for c in IDS:
        server.receive_shares(c, clients[c].share(server.neighbours_of(c)))
    server.close_share()
    too_big = np.full(LENGTH, 2**16, dtype=np.uint32)
    with pytest.raises(SecAggRefused, match="below 2\\^16"):
        server.receive_masked("c0", too_big)
    with pytest.raises(SecAggRefused, match="must be 24"):
        server.receive_masked("c0", np.zeros(3, dtype=np.uint32))


def test_a_client_refuses_stages_out_of_order():
    client = SecAggClient("c0", RoundSetup(b"order", T, 32, LENGTH))
    with pytest.raises(SecAggRefused, match="expected 'advertise'"):
        client.share({})
    client.advertise()
    with pytest.raises(SecAggRefused, match="expected 'share'"):
        client.advertise()
