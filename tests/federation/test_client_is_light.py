"""The training client needs PyTorch, not the server or the central pipeline."""

import subprocess
import sys

HEAVY = (
    "fastapi",
    "uvicorn",
    "starlette",
    "boto3",
    "botocore",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "fedge.central",
    "fedge.federation.server",
    "fedge.federation.app",
)


def test_importing_the_client_loads_no_server_or_cloud_code():
    code = (
        "import sys, fedge.federation.client, fedge.cli.federation\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') "
        "for h in heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
