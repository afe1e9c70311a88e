"""The model registry, on the local folder and on a real S3 API."""

import hashlib
import json
import threading

import pytest
import torch

from fedge.central.registry import ModelRegistry
from fedge.central.storage import ObjectStore
from fedge.central.weights import params_from_bytes, params_to_bytes
from fedge.errors import ModelNotFound, ModelSpecError, RegistryError, StorageError
from fedge.models.spec import build_model, preset_spec

SPEC = preset_spec("mlp", (1, 4, 4), 3, hidden=(5,))


def files(seed=0, spec=SPEC):
    """A valid version: the spec and weights built from it with ``seed``."""
    return {
        "model.safetensors": params_to_bytes(build_model(spec, seed=seed).state_dict()),
        "model.json": spec.model_dump_json().encode(),
    }


@pytest.fixture
def registry(store):
    return ModelRegistry(store)


def test_versions_count_up_from_one(registry):
    assert registry.list_models() == []
    numbers = [registry.register("clf", files(seed=i)).version for i in range(3)]
    assert numbers == [1, 2, 3]
    assert registry.version_numbers("clf") == [1, 2, 3]
    assert [v.version for v in registry.list_versions("clf")] == [1, 2, 3]
    assert registry.get("clf").version == 3
    assert registry.get("clf", "latest").version == 3
    assert registry.get("clf", 2).version == 2
    assert registry.get("clf", "2").version == 2


def test_a_version_records_its_files_metrics_data_and_config(registry):
    bundle = {**files(), "model.onnx": b"onnx bytes"}
    v = registry.register(
        "clf",
        bundle,
        metrics={"accuracy": 0.91, "per_class": (0.9, 0.92)},
        data_version="digits@3",
        config={"lr": 0.1, "epochs": 2},
        source="runs/x",
    )
    got = registry.get("clf", 1)
    assert got == v
    assert got.metrics == {"accuracy": 0.91, "per_class": [0.9, 0.92]}
    assert (got.data_version, got.config, got.source) == (
        "digits@3",
        {"lr": 0.1, "epochs": 2},
        "runs/x",
    )
    assert got.created_at.tzinfo is not None
    assert got.model_spec() == SPEC
    for name, data in bundle.items():
        assert got.files[name].sha256 == hashlib.sha256(data).hexdigest()
        assert got.files[name].size == len(data)
        assert registry.read_file(got, name) == data
    params = params_from_bytes(registry.read_file(got, "model.safetensors"))
    assert torch.equal(params["dense1.weight"], build_model(SPEC).state_dict()["dense1.weight"])


def test_versions_are_immutable_and_share_identical_files(registry):
    first = registry.register("clf", files(seed=0))
    manifest = registry.store.get_bytes("models/clf/versions/1.json")
    registry.register("clf", files(seed=0), metrics={"note": "same weights"})
    assert registry.store.get_bytes("models/clf/versions/1.json") == manifest
    assert registry.get("clf", 1) == first
    assert len(registry.store.list("blobs/")) == 2  # weights and spec, stored once


def test_aliases_move(registry):
    for i in range(3):
        registry.register("clf", files(seed=i))
    assert registry.aliases("clf") == {}
    assert registry.promote("clf", 1).version == 1
    assert registry.get("clf", "production").version == 1
    registry.promote("clf", "3", alias="staging")
    registry.promote("clf", "staging")  # production takes staging's version
    assert registry.aliases("clf") == {"production": 3, "staging": 3}
    registry.promote("clf", 2, alias="staging")
    assert registry.get("clf", "staging").version == 2
    assert registry.get("clf", "production").version == 3


def test_models_are_listed_by_name(registry):
    registry.register("zeta", files())
    registry.register("alpha", files())
    registry.register("alpha", files(seed=1))
    assert registry.list_models() == ["alpha", "zeta"]
    assert registry.version_numbers("zeta") == [1]
    assert registry.version_numbers("nothing") == []


def test_concurrent_registrations_get_distinct_versions(registry):
    bundles = [files(seed=i) for i in range(6)]
    barrier = threading.Barrier(len(bundles))
    got, errors = [], []

    def register(bundle):
        barrier.wait()
        try:
            for _ in range(3):
                got.append(registry.register("clf", bundle).version)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == list(range(1, 19))
    assert registry.version_numbers("clf") == list(range(1, 19))


class _StaleListing(ObjectStore):
    """A store whose first listing misses the newest version, as when another process
    registered between this one's listing and its write."""

    def __init__(self, inner):
        self.inner = inner
        self.stale = True

    url = property(lambda self: self.inner.url)

    def list(self, prefix=""):
        keys = self.inner.list(prefix)
        if self.stale and "/versions/" in prefix:
            self.stale = False
            return keys[:-1]
        return keys

    def put_bytes(self, key, data):
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key, data):
        return self.inner.put_if_absent(key, data)

    def get_bytes(self, key):
        return self.inner.get_bytes(key)

    def put_file(self, key, path):
        self.inner.put_file(key, path)

    def get_file(self, key, path):
        return self.inner.get_file(key, path)

    def exists(self, key):
        return self.inner.exists(key)

    def size(self, key):
        return self.inner.size(key)

    def delete(self, key):
        self.inner.delete(key)


def test_a_taken_version_number_is_skipped_not_overwritten(store):
    ModelRegistry(store).register("clf", files(seed=0))
    v1 = store.get_bytes("models/clf/versions/1.json")
    assert ModelRegistry(_StaleListing(store)).register("clf", files(seed=1)).version == 2
    assert store.get_bytes("models/clf/versions/1.json") == v1


class _FailingManifests(_StaleListing):
    """A store that stores blobs but fails when the manifest is written."""

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def put_if_absent(self, key, data):
        raise StorageError("disk on fire")


def test_failed_registration_leaves_the_registry_unchanged(store):
    registry = ModelRegistry(store)
    registry.register("clf", files())
    registry.promote("clf", 1)
    before = store.list()

    other = preset_spec("mlp", (1, 4, 4), 3, hidden=(6,))
    mismatched = {**files(), "model.json": other.model_dump_json().encode()}
    with pytest.raises(ModelSpecError, match=r"dense1.weight has shape"):
        registry.register("clf", mismatched)
    with pytest.raises(RegistryError, match=r"model.json is missing"):
        registry.register("clf", {"model.safetensors": files()["model.safetensors"]})
    with pytest.raises(ModelSpecError, match=r"not a valid safetensors"):
        registry.register("clf", {**files(), "model.safetensors": b"garbage"})
    with pytest.raises(RegistryError, match=r"metrics must be JSON"):
        registry.register("clf", files(seed=1), metrics={"loss": float("nan")})
    with pytest.raises(RegistryError, match=r"invalid file name"):
        registry.register("clf", {**files(seed=1), "../evil": b"x"})
    assert store.list() == before

    with pytest.raises(StorageError, match=r"disk on fire"):
        ModelRegistry(_FailingManifests(store)).register("clf", files(seed=1))
    assert registry.version_numbers("clf") == [1]
    assert registry.aliases("clf") == {"production": 1}


def test_unknown_model_version_and_alias_are_named(registry):
    with pytest.raises(ModelNotFound, match=r"unknown model 'clf'.*registry is empty"):
        registry.get("clf")
    registry.register("clf", files())
    registry.promote("clf", 1, alias="staging")
    with pytest.raises(ModelNotFound, match=r"unknown model 'other'.*models: clf"):
        registry.get("other", 1)
    with pytest.raises(ModelNotFound, match=r"unknown model 'other'"):
        registry.list_versions("other")
    with pytest.raises(ModelNotFound, match=r"has no version 7 \(versions: 1\)"):
        registry.get("clf", 7)
    with pytest.raises(ModelNotFound, match=r"has no version 0"):
        registry.get("clf", 0)
    with pytest.raises(ModelNotFound, match=r"no alias 'production' \(aliases: staging\)"):
        registry.get("clf", "production")
    with pytest.raises(ModelNotFound, match=r"no alias"):
        registry.promote("clf", "production", alias="prod2")
    with pytest.raises(ModelNotFound, match=r"has no version 9"):
        registry.promote("clf", 9)
    with pytest.raises(ModelNotFound, match=r"no file 'model.onnx'"):
        registry.read_file(registry.get("clf"), "model.onnx")


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "x" * 101, "sp ace"])
def test_invalid_model_names_are_refused(registry, name):
    with pytest.raises(RegistryError, match=r"invalid model name"):
        registry.register(name, files())
    assert registry.store.list() == []


@pytest.mark.parametrize("alias", ["3", "latest", "a/b", ""])
def test_aliases_cannot_look_like_versions_or_paths(registry, alias):
    registry.register("clf", files())
    with pytest.raises(RegistryError, match=r"invalid alias"):
        registry.promote("clf", 1, alias=alias)


def test_download_writes_every_file(registry, tmp_path):
    v = registry.register("clf", {**files(), "model.onnx": b"onnx"})
    folder = registry.download(v, tmp_path / "bundle")
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.json",
        "model.onnx",
        "model.safetensors",
    ]
    assert json.loads((folder / "model.json").read_text())["name"] == "mlp"


def test_corrupt_manifest_is_reported(registry):
    registry.register("clf", files())
    registry.store.put_bytes("models/clf/versions/2.json", b"{not json")
    with pytest.raises(RegistryError, match=r"manifest models/clf/versions/2.json.*corrupt"):
        registry.get("clf")
