"""The object-store contract, run against the local folder and a real S3 API (moto over
HTTP), plus what is particular to each backend and to store URLs."""

import errno
import hashlib
import os
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from fedge.central.storage import LocalStore, S3Store, blob_key, open_store
from fedge.errors import FedgeError, ObjectNotFound, StorageError

# --- the contract, for every backend -------------------------------------------------


def test_bytes_round_trip_and_overwrite(store):
    store.put_bytes("a/b.bin", b"one")
    assert store.get_bytes("a/b.bin") == b"one"
    store.put_bytes("a/b.bin", b"two")
    assert store.get_bytes("a/b.bin") == b"two"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_missing_key_is_object_not_found(store):
    with pytest.raises(ObjectNotFound, match=r"no object 'nope/x'") as info:
        store.get_bytes("nope/x")
    assert isinstance(info.value, StorageError | FedgeError)


def test_exists(store):
    assert not store.exists("k")
    store.put_bytes("k", b"v")
    assert store.exists("k")
    assert not store.exists("k2")


def test_list_by_prefix_is_sorted_and_matches_partial_segments(store):
    assert store.list() == []
    for key in ["models/b/1", "models/a/2", "models/a/1", "models/ab/1", "blobs/x"]:
        store.put_bytes(key, b".")
    assert store.list() == ["blobs/x", "models/a/1", "models/a/2", "models/ab/1", "models/b/1"]
    assert store.list("models/a/") == ["models/a/1", "models/a/2"]
    assert store.list("models/a") == ["models/a/1", "models/a/2", "models/ab/1"]
    assert store.list("models/a/1") == ["models/a/1"]
    assert store.list("nothing/") == []


def test_delete_removes_and_ignores_missing_keys(store):
    store.put_bytes("x/y", b"1")
    store.delete("x/y")
    assert not store.exists("x/y")
    assert store.list() == []
    store.delete("x/y")


def test_put_if_absent_creates_once_and_keeps_the_first(store):
    assert store.put_if_absent("lock", b"first") is True
    assert store.put_if_absent("lock", b"second") is False
    assert store.get_bytes("lock") == b"first"


def test_put_if_absent_has_one_winner_among_concurrent_writers(store):
    barrier = threading.Barrier(8)
    wins = []

    def claim(i):
        barrier.wait()
        if store.put_if_absent("claim", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_bytes("claim") == str(wins[0]).encode()


def test_file_round_trip_streams_large_files(store, tmp_path):
    src = tmp_path / "big.bin"
    data = os.urandom(9 * 2**20)  # above boto3's 8 MiB multipart threshold
    src.write_bytes(data)
    store.put_file("files/big.bin", src)
    dest = store.get_file("files/big.bin", tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]


def test_get_file_of_missing_key_writes_nothing(store, tmp_path):
    with pytest.raises(ObjectNotFound):
        store.get_file("missing", tmp_path / "dest.bin")
    assert not (tmp_path / "dest.bin").exists()


def test_size_is_the_stored_byte_count_or_none(store):
    store.put_bytes("a/b.bin", b"x" * 1234)
    assert store.size("a/b.bin") == 1234
    assert store.size("a/missing.bin") is None


def test_put_file_of_missing_file_is_a_storage_error(store, tmp_path):
    with pytest.raises(StorageError, match=r"no-such-file"):
        store.put_file("k", tmp_path / "no-such-file")
    assert store.list() == []


def test_blobs_are_content_addressed_and_idempotent(store, tmp_path):
    digest = store.put_blob(b"weights")
    assert digest == hashlib.sha256(b"weights").hexdigest()
    assert store.list() == [f"blobs/sha256/{digest}"]
    assert store.put_blob(b"weights") == digest
    assert store.list() == [f"blobs/sha256/{digest}"]
    assert store.get_blob(digest) == b"weights"
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    assert store.put_blob_file(path) == digest
    assert store.list() == [f"blobs/sha256/{digest}"]


def test_corrupt_blob_is_detected(store):
    digest = store.put_blob(b"weights")
    store.put_bytes(blob_key(digest), b"tampered")
    with pytest.raises(StorageError, match=r"corrupt"):
        store.get_blob(digest)


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/abs", "a//b", "", ".hidden", "a/./b", "a\\b", "a/b/", "a\nb"]
)
def test_invalid_keys_are_refused(store, key):
    with pytest.raises(StorageError, match=r"invalid object key"):
        store.put_bytes(key, b"x")
    with pytest.raises(StorageError, match=r"invalid object key"):
        store.get_bytes(key)
    assert store.list() == []


def test_bad_digest_is_refused(store):
    with pytest.raises(StorageError, match=r"not a SHA-256"):
        store.get_blob("../../etc/passwd")


# --- the local folder ----------------------------------------------------------------


def test_local_store_creates_its_folder_on_first_write_only(tmp_path):
    store = LocalStore(tmp_path / "later")
    assert store.list() == []
    assert not store.exists("k")
    assert not (tmp_path / "later").exists()
    store.put_bytes("k", b"v")
    assert (tmp_path / "later" / "k").read_bytes() == b"v"


def test_local_store_refuses_keys_through_a_symlink_out_of_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = LocalStore(root)
    with pytest.raises(StorageError, match=r"leads outside"):
        store.put_bytes("link/x", b"escape")
    assert list(outside.iterdir()) == []


def test_local_disk_full_is_a_clear_error_and_keeps_the_old_object(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match=r"cannot write 'k'.*no space left on device"):
        store.put_bytes("k", b"new")
    monkeypatch.undo()
    assert store.get_bytes("k") == b"old"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["k"]  # no temp file left


def test_local_key_below_an_object_is_a_clear_error(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"object")
    with pytest.raises(StorageError, match=r"parent of the key is an object"):
        store.put_bytes("a/b", b"x")
    store.put_bytes("c/d", b"x")
    with pytest.raises(StorageError, match=r"'c': it is a prefix of other keys"):
        store.put_if_absent("c", b"object")


def test_local_temporary_files_are_not_listed(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("dir/k", b"v")
    (tmp_path / "dir" / ".k.123.tmp").write_bytes(b"partial")
    assert store.list() == ["dir/k"]


# --- S3 --------------------------------------------------------------------------------


def test_s3_prefixes_keep_stores_apart(bucket, s3_admin):
    a = open_store(f"s3://{bucket}/team-a")
    b = open_store(f"s3://{bucket}/team-b/")
    a.put_bytes("k", b"a")
    b.put_bytes("k", b"b")
    assert a.list() == ["k"] and b.list() == ["k"]
    assert a.get_bytes("k") == b"a" and b.get_bytes("k") == b"b"
    keys = s3_admin.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(obj["Key"] for obj in keys) == ["team-a/k", "team-b/k"]


def test_s3_missing_bucket_is_named(aws_env):
    store = open_store("s3://no-such-bucket-fedge")
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-fedge' does not exist"):
        store.put_bytes("k", b"v")


def test_s3_unreachable_endpoint_is_a_storage_error(aws_env, free_port):
    endpoint = f"http://127.0.0.1:{free_port}"
    no_retries = Config(retries={"total_max_attempts": 1}, connect_timeout=2)
    client = boto3.client("s3", endpoint_url=endpoint, config=no_retries)
    store = S3Store("bkt", endpoint_url=endpoint, client=client)
    with pytest.raises(StorageError, match=r"cannot read 'k'"):
        store.get_bytes("k")


# --- URLs ------------------------------------------------------------------------------


def test_open_store_reads_paths_and_file_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/store").root == tmp_path / "rel" / "store"
    assert open_store(tmp_path / "p").root == tmp_path / "p"
    assert open_store(f"file://{tmp_path}/u").root == tmp_path / "u"
    assert open_store(f"file://localhost{tmp_path}/u").root == tmp_path / "u"
    assert open_store(str(tmp_path / "x")).url == (tmp_path / "x").as_uri()


def test_open_store_reads_s3_urls_and_endpoints(monkeypatch):
    monkeypatch.setenv("FEDGE_S3_ENDPOINT", "http://127.0.0.1:9")
    store = open_store("s3://bkt/a/b/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == ("bkt", "a/b/", "http://127.0.0.1:9")
    assert open_store("s3://bkt").prefix == ""
    direct = open_store("s3://bkt", endpoint_url="http://127.0.0.1:10")
    assert direct.endpoint_url == "http://127.0.0.1:10"
    monkeypatch.delenv("FEDGE_S3_ENDPOINT")
    assert open_store("s3://bkt").endpoint_url is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "unsupported store URL"),
        ("s3:///prefix", "without a bucket"),
        ("file://host/path", "local path"),
        ("", "empty store URL"),
        ("s3://bkt/../x", "invalid object key"),
    ],
)
def test_open_store_refuses_bad_urls(url, message):
    with pytest.raises(StorageError, match=message):
        open_store(url)


def test_store_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LocalStore("s")
    store.put_bytes("k", b"v")
    monkeypatch.chdir(Path("/"))
    assert store.get_bytes("k") == b"v"
