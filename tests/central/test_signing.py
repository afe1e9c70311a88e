"""Signed model versions: the registry signs with the publisher's Ed25519 key, and an edge
app given the public key installs only what that key signed, whoever serves it."""

import base64
import json
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedge.central import LocalStore, ModelRegistry, publish_model
from fedge.central.edge import EdgeApp
from fedge.central.signing import (
    create_key,
    load_public_key,
    public_key_text,
    sign_version,
    verify_version,
)
from fedge.cli.main import app
from fedge.errors import ConfigError, ServingError
from fedge.models.spec import build_model, preset_spec

SPEC = preset_spec("mlp", (1, 8, 8), 10, hidden=(8,))
runner = CliRunner()
FILES = {"model.onnx": "a" * 64, "model.json": "b" * 64}


TASK = {"kind": "detection", "num_classes": 2, "categories": ["cat", "dog"]}


def test_a_signature_covers_name_version_every_file_hash_and_the_task():
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    signature = sign_version(key, "digits", 3, FILES, TASK).model_dump()
    assert verify_version(public, "digits", 3, FILES, signature, TASK) is None
    # The statement is the canonical JSON of name, version, hashes and task: checked here
    # with the cryptography library directly, not through fedge.
    body = {"fedge": "model-version/2", "name": "digits", "version": 3, "files": FILES}
    statement = json.dumps({**body, "task": TASK}, sort_keys=True, separators=(",", ":"))
    public.verify(base64.b64decode(signature["ed25519"]), statement.encode())
    swapped = {**TASK, "categories": ["dog", "cat"]}
    for name, version, files, task in (
        ("other", 3, FILES, TASK),
        ("digits", 4, FILES, TASK),
        ("digits", 3, {**FILES, "model.onnx": "c" * 64}, TASK),
        ("digits", 3, FILES, swapped),
        ("digits", 3, FILES, None),
    ):
        assert "does not match" in verify_version(public, name, version, files, signature, task)
    untasked = sign_version(key, "digits", 3, FILES).model_dump()  # "task": null
    assert verify_version(public, "digits", 3, FILES, untasked) is None
    assert "does not match" in verify_version(public, "digits", 3, FILES, untasked, TASK)
    stranger = Ed25519PrivateKey.generate().public_key()
    assert "not the publisher's" in verify_version(stranger, "digits", 3, FILES, signature)
    assert "not signed" in verify_version(public, "digits", 3, FILES, None)
    assert "malformed" in verify_version(
        public, "digits", 3, FILES, {"key_id": "x", "ed25519": "%%"}
    )


def test_public_keys_load_from_text_files_and_pem(tmp_path):
    key = create_key(tmp_path / "k.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    text = public_key_text(key.public_key())
    (tmp_path / "pub.txt").write_text(text + "\n")
    for given in (text, str(tmp_path / "pub.txt")):
        assert public_key_text(load_public_key(given)) == text
    with pytest.raises(ConfigError, match="base64 of 32 bytes"):
        load_public_key("not a key")
    with pytest.raises(ConfigError, match="never overwritten"):
        create_key(tmp_path / "k.pem")


@pytest.fixture(scope="module")
def publisher(tmp_path_factory):
    root = tmp_path_factory.mktemp("signing")
    key = create_key(root / "publisher.pem")
    return key, public_key_text(key.public_key())


def registry_with(root, name, key, seed):
    registry = ModelRegistry(LocalStore(root), signing_key=key)
    task = {"kind": "classification", "num_classes": 10, "categories": list("0123456789")}
    publish_model(registry, name, SPEC, build_model(SPEC, seed=seed).state_dict(), task=task)
    registry.promote(name, 1)
    return registry


def test_edge_installs_only_what_the_publisher_signed(tmp_path, publisher, serve_process):
    key, public = publisher
    honest = registry_with(tmp_path / "honest", "digits", key, seed=0)
    assert honest.get("digits", 1).signature is not None
    # Servers an attacker controls (a hijacked DNS name): a working model that is unsigned,
    # and one signed by the attacker's own key.
    unsigned = registry_with(tmp_path / "unsigned", "digits", None, seed=1)
    forged = registry_with(tmp_path / "forged", "digits", Ed25519PrivateKey.generate(), seed=1)
    cache = tmp_path / "cache"
    x = np.zeros((1, 1, 8, 8), np.float32)
    with serve_process(honest.store.root, log=tmp_path / "h.log") as good:
        EdgeApp("digits", good, cache, publisher_key=public).update()
    expected = EdgeApp("digits", None, cache, publisher_key=public).predict(x).labels
    # And the honest, signed version with its task rewritten where it is stored: the class
    # names a device shows are the task's.
    renamed = registry_with(tmp_path / "renamed", "digits", key, seed=1)
    manifest = renamed.store.root / "models" / "digits" / "versions" / "1.json"
    stored = json.loads(manifest.read_text())
    stored["task"] = {"kind": "classification", "num_classes": 10, "categories": list("ABCDEFGHIJ")}
    manifest.write_text(json.dumps(stored))
    attackers = {
        "unsigned": (unsigned, "not signed"),
        "forged": (forged, "not the publisher's"),
        "renamed": (renamed, "does not match its files and task"),
    }
    for kind, (registry, reason) in attackers.items():
        with serve_process(registry.store.root, log=tmp_path / "a.log") as evil:
            with pytest.raises(ServingError, match=reason):
                EdgeApp("digits", evil, cache, publisher_key=public).update()
            # Without a publisher key the same download is taken: the key is what stops it.
            other_cache = tmp_path / f"open-{kind}"
            assert EdgeApp("digits", evil, other_cache).update().changed
    # The signed version stayed in use.
    kept = EdgeApp("digits", None, cache, publisher_key=public)
    np.testing.assert_array_equal(kept.predict(x).labels, expected)


def test_cli_keygen_signs_registrations_and_devices_check(tmp_path, serve_process, monkeypatch):
    result = runner.invoke(app, ["models", "keygen", str(tmp_path / "key.pem")])
    assert result.exit_code == 0, result.output
    public = result.stdout.strip()
    assert len(base64.b64decode(public)) == 32
    store = tmp_path / "store"
    unsigned = ModelRegistry(LocalStore(store), signing_key=None)
    v = publish_model(unsigned, "digits", SPEC, build_model(SPEC, seed=0).state_dict())
    assert v.signature is None
    files = {name: unsigned.read_file(v, name) for name in v.files}
    monkeypatch.setenv("FEDGE_SIGNING_KEY", str(tmp_path / "key.pem"))
    signed = ModelRegistry(LocalStore(store)).register("digits", files)  # key from the env
    assert signed.signature is not None and signed.version == 2
    unsigned.promote("digits", 1)
    device = {"FEDGE_EDGE_CACHE": str(tmp_path / "cache"), "FEDGE_PUBLISHER_KEY": public}
    with serve_process(store, "--poll", 0.2, log=tmp_path / "log") as url:
        refused = runner.invoke(app, ["edge", "update", "digits", "--server", url], env=device)
        assert refused.exit_code != 0 and "not signed" in refused.output
        unsigned.promote("digits", 2)
        deadline = time.monotonic() + 10
        while True:
            took = runner.invoke(app, ["edge", "update", "digits", "--server", url], env=device)
            if took.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert took.exit_code == 0 and "downloaded version 2" in took.output, took.output
