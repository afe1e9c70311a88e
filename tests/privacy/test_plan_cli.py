"""``fedge privacy plan``: the noise multiplier for a budget, before anyone trains."""

import re

from typer.testing import CliRunner

from fedge.cli.main import app
from fedge.privacy import PrivacyLedger

runner = CliRunner()


def test_plan_prints_the_noise_multiplier_that_reaches_the_budget():
    args = ["--clients", "1000", "--per-round", "100", "--rounds", "100", "--epsilon", "8"]
    result = runner.invoke(app, ["privacy", "plan", *args, "--delta", "1e-5"])
    assert result.exit_code == 0, result.output
    z = float(re.search(r"noise multiplier z = ([0-9.]+)", result.output).group(1))
    ledger = PrivacyLedger(1000, 100, z, 1e-5)
    assert ledger.epsilon(100) <= 8.0 + 1e-3
    assert PrivacyLedger(1000, 100, z - 0.01, 1e-5).epsilon(100) > 8.0
    ratio = float(re.search(r"z/m = ([0-9.]+)", result.output).group(1))
    assert ratio == z / 100 or abs(ratio - z / 100) < 1e-4


def test_plan_refuses_more_clients_per_round_than_clients():
    args = ["--clients", "10", "--per-round", "20", "--rounds", "5", "--epsilon", "1"]
    result = runner.invoke(app, ["privacy", "plan", *args])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "clients per round" in result.output


def test_plan_prints_secure_aggregation_parameters_for_the_cohort():
    args = ["--clients", "100000", "--per-round", "1000", "--rounds", "10", "--epsilon", "8"]
    result = runner.invoke(
        app, ["privacy", "plan", *args, "--dropout", "0.33", "--corrupt", "0.05"]
    )
    assert result.exit_code == 0, result.output
    # federated-compute's finder: 1000 clients, 5% corrupt, 33% dropouts → k = 72, t <= 24
    k = int(re.search(r"k = (\d+) neighbours", result.output).group(1))
    t = int(re.search(r"threshold t = (\d+)", result.output).group(1))
    assert k == 72 and 2 <= t <= 24
    bad = runner.invoke(app, ["privacy", "plan", *args, "--dropout", "0.9"])
    assert bad.exit_code == 2 and "cannot tolerate" in bad.output
