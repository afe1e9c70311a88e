import pytest
import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.aggregators import Krum, Median, NormBound, TrimmedMean, WeightedMean


def _deltas(rows, weights=None):
    weights = weights or [1.0] * len(rows)
    return [
        ({"a": torch.tensor(r[:2]), "b": torch.tensor(r[2:])}, w)
        for r, w in zip(rows, weights, strict=True)
    ]


ROWS = [[1.0, 2.0, 3.0], [2.0, 0.0, 5.0], [4.0, 1.0, -1.0], [10.0, 3.0, 2.0]]


def _vec(params):
    return torch.cat([params["a"], params["b"]]).tolist()


def test_weighted_mean_by_hand():
    out = WeightedMean()(_deltas(ROWS, [1, 1, 2, 0]))
    # (1*r0 + 1*r1 + 2*r2 + 0*r3) / 4
    assert _vec(out) == pytest.approx([11 / 4, 4 / 4, 6 / 4])


def test_median_by_hand_even_and_odd():
    assert _vec(Median()(_deltas(ROWS))) == pytest.approx([3.0, 1.5, 2.5])
    assert _vec(Median()(_deltas(ROWS[:3]))) == pytest.approx([2.0, 1.0, 3.0])


def test_trimmed_mean_by_hand():
    # beta 0.25 of 4 drops one largest and one smallest per coordinate
    assert _vec(TrimmedMean(0.25)(_deltas(ROWS))) == pytest.approx([3.0, 1.5, 2.5])
    assert _vec(TrimmedMean(0.0)(_deltas(ROWS))) == pytest.approx([17 / 4, 6 / 4, 9 / 4])


def test_krum_by_hand():
    rows = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [9.0, 9.0, 9.0]]
    # f=1: each score sums the K-f-2 = 2 smallest squared distances; row 0 scores 1+1=2,
    # rows 1..3 score 1+2=3, the outlier scores far more.
    stacked = torch.tensor(rows, dtype=torch.float64)
    assert Krum(f=1).select(stacked).tolist() == [0]
    assert _vec(Krum(f=1)(_deltas(rows))) == [0.0, 0.0, 0.0]
    multi = Krum(f=1, m=4)(_deltas(rows))
    assert _vec(multi) == pytest.approx([0.25, 0.25, 0.25])


def test_norm_bound_scales_only_long_deltas():
    rows = [[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]]
    out = NormBound(1.0, WeightedMean())(_deltas(rows))
    # the first (norm 5) becomes (0.6, 0.8, 0); the second (norm 0.5) is kept
    assert _vec(out) == pytest.approx([0.45, 0.6, 0.0])


@pytest.mark.parametrize("agg", [Median(), TrimmedMean(0.2)])
def test_coordinate_rules_ignore_a_bounded_number_of_arbitrary_outliers(agg):
    gen = torch.Generator().manual_seed(0)
    honest = [[1.0 + 0.01 * float(torch.randn(1, generator=gen)), 2.0, -1.0] for _ in range(8)]
    clean = _vec(agg(_deltas(honest)))
    for outlier in (1e6, -1e9, float("1e30")):
        attacked = honest + [[outlier, -outlier, outlier]] * 2  # 2 of 10 malicious
        out = _vec(agg(_deltas(attacked)))
        assert out == pytest.approx(clean, abs=0.02)
        assert all(
            min(r[i] for r in honest) <= out[i] <= max(r[i] for r in honest) for i in range(3)
        )


def test_krum_picks_an_honest_update_when_fewer_than_half_minus_one_attack():
    gen = torch.Generator().manual_seed(1)
    n, f = 11, 4  # f < (n - 2) / 2 = 4.5
    honest = (torch.randn(n - f, 20, generator=gen) * 0.1 + 1.0).tolist()
    attackers = [[-50.0] * 20, [40.0] * 20, [0.0] * 20, [100.0] * 20]
    rows = honest + attackers
    stacked = torch.tensor(rows, dtype=torch.float64)
    chosen = Krum(f=f, m=n - 2 * f).select(stacked).tolist()
    assert all(i < n - f for i in chosen)


def test_krum_needs_enough_updates():
    with pytest.raises(FedgeError, match="needs more than 4 updates"):
        Krum(f=1)(_deltas(ROWS))


def test_no_update_is_an_error_for_every_aggregator():
    for agg in (WeightedMean(), Median(), TrimmedMean(), Krum()):
        with pytest.raises(FedgeError, match="no client update"):
            agg([])


@pytest.mark.parametrize(
    "make", [lambda: TrimmedMean(0.5), lambda: Krum(f=-1), lambda: NormBound(0.0)]
)
def test_bad_parameters_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_aggregators_keep_the_parameter_dtype():
    for agg in (WeightedMean(), Median(), TrimmedMean(0.25), Krum(f=0)):
        out = agg(_deltas(ROWS))
        assert out["a"].dtype == torch.float32 and out["b"].shape == (1,)
