"""``python -m fedge`` runs the command line."""

from fedge.cli.main import app

app(prog_name="fedge")
