"""storage: every operation on a local tmp dir, on a real Cloud Storage emulator on loopback, and on
fsspec's ``memory://`` file system (any fsspec URL takes the generic path)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bigimage.data import dirlock, readers, schema, storage
from bigimage.data.storage import FileInfo
from bigimage.train.shared_checkpoint import SharedCheckpoint
from bigimage.train.task import local_tfrecord_dir


def _memory_url() -> str:
    return f"memory://store-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "gcs", "memory"])
def base(request, tmp_path) -> str:
    """A root URL to work under: a local tmp dir, a fresh emulator bucket, or a fresh memory:// folder."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return _memory_url()
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/store"


def test_urls_and_join():
    assert storage.is_gcs("gs://b/k") and storage.is_remote("gs://b/k")
    assert not storage.is_gcs("/tmp/x") and not storage.is_remote("/tmp/x")
    assert not storage.is_remote("data/gs://x")
    assert storage.is_remote("memory://x") and not storage.is_gcs("memory://x")
    assert [storage.protocol(url) for url in ("s3://b/k", "hdfs://h/p", "x/y")] == ["s3", "hdfs", "file"]
    assert storage.join("gs://b/", "a/", "/c.jpg") == "gs://b/a/c.jpg"
    assert storage.join("gs://b/a", "", "c") == "gs://b/a/c"
    assert storage.join("/tmp/x", "a", "b.jpg") == os.path.join("/tmp/x", "a", "b.jpg")
    assert storage.filesystem("gs://bucket/a/b/")[1] == "bucket/a/b"
    with pytest.raises(ValueError):
        storage.filesystem("gs:///a")
    assert storage.basename("gs://b/a/c.jpg") == "c.jpg" == storage.basename("/x/c.jpg")


def test_write_read_list_exists(base):
    assert storage.list_files(base) == []
    assert not storage.exists(base)
    storage.write_bytes(storage.join(base, "b", "two.bin"), b"22")
    storage.write_bytes(storage.join(base, "a.bin"), b"1")
    storage.write_bytes(storage.join(base, "b", "c", "three.bin"), b"333")
    assert storage.read_bytes(storage.join(base, "b", "c", "three.bin")) == b"333"
    files = storage.list_files(base)
    assert files == [
        FileInfo(storage.join(base, "a.bin"), 1),
        FileInfo(storage.join(base, "b", "c", "three.bin"), 3),
        FileInfo(storage.join(base, "b", "two.bin"), 2),
    ]
    assert [f.path for f in files] == sorted(f.path for f in files)
    assert storage.list_files(storage.join(base, "b", "c")) == [FileInfo(storage.join(base, "b", "c", "three.bin"), 3)]
    assert storage.exists(storage.join(base, "a.bin"))
    assert storage.exists(storage.join(base, "b"))  # a directory / non-empty prefix
    assert storage.exists(base)
    assert not storage.exists(storage.join(base, "nope.bin"))
    # Overwrite replaces the content.
    storage.write_bytes(storage.join(base, "a.bin"), b"new")
    assert storage.read_bytes(storage.join(base, "a.bin")) == b"new"


def test_prefix_is_a_directory_not_a_string_prefix(base):
    storage.write_bytes(storage.join(base, "data", "x"), b"x")
    storage.write_bytes(storage.join(base, "data2", "y"), b"y")
    assert [f.path for f in storage.list_files(storage.join(base, "data"))] == [storage.join(base, "data", "x")]


def test_missing_reads_raise_file_not_found(base, tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "missing"))
    with pytest.raises(FileNotFoundError):
        storage.copy(storage.join(base, "missing"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):
        storage.move(storage.join(base, "missing"), storage.join(base, "other"))


def test_copy_in_out_and_within(base, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    url = storage.join(base, "up", "src.bin")
    storage.copy(src, url)
    out = tmp_path / "deep" / "dir" / "copy.bin"
    storage.copy(url, out)
    assert out.read_bytes() == src.read_bytes()
    assert storage.list_files(storage.join(base, "up")) == [FileInfo(url, 3000)]
    storage.copy(url, storage.join(base, "other", "same.bin"))
    assert storage.read_bytes(storage.join(base, "other", "same.bin")) == src.read_bytes()
    with pytest.raises(FileNotFoundError):
        storage.copy(tmp_path / "missing.bin", storage.join(base, "never.bin"))


def test_copy_between_two_remote_file_systems(gcs_bucket):
    memory, gcs = storage.join(_memory_url(), "a.bin"), f"gs://{gcs_bucket}/from-memory/a.bin"
    storage.write_bytes(memory, b"across")
    storage.move(memory, gcs)
    assert storage.read_bytes(gcs) == b"across" and not storage.exists(memory)


def test_delete_and_delete_files(base):
    urls = [storage.join(base, f"f{i}") for i in range(5)]
    for url in urls:
        storage.write_bytes(url, b"x")
    storage.delete(urls[0])
    storage.delete(urls[0])  # missing is fine
    assert not storage.exists(urls[0])
    storage.delete_files(urls + [storage.join(base, "never-existed")])
    assert storage.list_files(base) == []
    storage.delete_files([])


def test_move(base):
    src, dst = storage.join(base, "tmp", "shard.part"), storage.join(base, "out", "sub", "shard.tfrec")
    storage.write_bytes(src, b"payload")
    storage.write_bytes(dst, b"old")
    storage.move(src, dst)
    assert not storage.exists(src)
    assert storage.read_bytes(dst) == b"payload"


def test_move_between_local_and_gcs(gcs_bucket, tmp_path):
    local = tmp_path / "a.bin"
    local.write_bytes(b"abc")
    url = f"gs://{gcs_bucket}/moved/a.bin"
    storage.move(str(local), url)
    assert not local.exists() and storage.read_bytes(url) == b"abc"
    back = tmp_path / "back" / "a.bin"
    storage.move(url, str(back))
    assert back.read_bytes() == b"abc" and not storage.exists(url)


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "d" / "shard.tfrec"

    class Boom(Exception):
        pass

    storage.write_bytes(str(target), b"complete")

    with pytest.raises(Boom), storage.atomic_file(target) as handle:
        handle.write(b"half")
        raise Boom
    assert target.read_bytes() == b"complete"
    assert os.listdir(target.parent) == ["shard.tfrec"]


def test_local_write_keeps_a_replaced_files_mode_and_gives_new_files_the_umasks(tmp_path):
    kept, new = tmp_path / "kept.yaml", tmp_path / "new.json"
    kept.write_bytes(b"old")
    kept.chmod(0o600)
    storage.write_bytes(str(kept), b"masked")
    storage.write_bytes(str(new), b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_bytes() == b"masked"
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask


def test_a_local_pipe_is_read_like_a_file(tmp_path):
    """A named pipe is read to its end (the preprocessing tests gate a job on one)."""
    pipe = tmp_path / "gate"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(b"through the pipe",))
    writer.start()
    assert storage.read_bytes(str(pipe)) == b"through the pipe"
    writer.join()


def test_local_missing_dir_and_file_path_list_empty(tmp_path):
    assert storage.list_files(str(tmp_path / "missing")) == []
    (tmp_path / "f").write_bytes(b"x")
    assert storage.list_files(str(tmp_path / "f")) == []


@pytest.mark.parametrize("kind", ["gcs", "memory"])
def test_local_cache_copy(kind, request, tmp_path):
    root = f"gs://{request.getfixturevalue('gcs_bucket')}" if kind == "gcs" else _memory_url()
    prefix = f"{root}/images"
    for name, data in [("a/1.jpg", b"1"), ("a/2.jpg", b"22"), ("b/3.jpg", b"333")]:
        storage.write_bytes(f"{prefix}/{name}", data)
    storage.write_bytes(f"{root}/images-other/x.jpg", b"no")
    cache = tmp_path / "cache"
    assert storage.local_cache_copy(prefix, cache) == str(cache)
    assert (cache / "a" / "2.jpg").read_bytes() == b"22"
    assert (cache / "b" / "3.jpg").read_bytes() == b"333"
    assert not (cache / "x.jpg").exists()

    # A file already there with the right size is kept (not downloaded again); a wrong size is fixed;
    # a file the bucket no longer holds is pruned.
    os.utime(cache / "a" / "1.jpg", (1, 1))
    (cache / "b" / "3.jpg").write_bytes(b"3")
    storage.delete(f"{prefix}/a/2.jpg")
    storage.local_cache_copy(prefix, cache)
    assert os.stat(cache / "a" / "1.jpg").st_mtime == 1
    assert (cache / "b" / "3.jpg").read_bytes() == b"333"
    assert not (cache / "a" / "2.jpg").exists()

    # Local paths come back unchanged, nothing copied.
    assert storage.local_cache_copy(str(tmp_path / "local"), tmp_path / "c2") == str(tmp_path / "local")
    assert not (tmp_path / "c2").exists()


def test_local_cache_copy_does_not_prune_a_foreign_directory(gcs_bucket, tmp_path):
    storage.write_bytes(f"gs://{gcs_bucket}/p/a.jpg", b"a")
    cache = tmp_path / "mine"
    cache.mkdir()
    (cache / "keep.txt").write_bytes(b"user file")
    storage.local_cache_copy(f"gs://{gcs_bucket}/p", cache)
    assert (cache / "keep.txt").exists() and (cache / "a.jpg").exists()


def test_emulator_env_is_inherited_by_subprocesses(gcs_bucket):
    """Spark Python workers are separate processes: they must reach the emulator through the env."""
    storage.write_bytes(f"gs://{gcs_bucket}/child/in.bin", b"from parent")
    code = (
        "from bigimage.data import storage\n"
        f"data = storage.read_bytes('gs://{gcs_bucket}/child/in.bin')\n"
        f"storage.write_bytes('gs://{gcs_bucket}/child/out.bin', data + b' and child')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert storage.read_bytes(f"gs://{gcs_bucket}/child/out.bin") == b"from parent and child"


def test_clients_are_per_process_and_recreated_after_fork(gcs_bucket):
    client, fs = storage.gcs_client(), storage.filesystem("gs://b/k")[0]
    assert storage.gcs_client() is client and storage.filesystem("gs://b/other")[0] is fs
    url = f"gs://{gcs_bucket}/forked.bin"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's clients (and their connection pools)
        try:
            storage.write_bytes(url, b"child")
            fresh = storage.gcs_client() is not client and storage.filesystem(url)[0] is not fs
            os.write(write_fd, b"1" if fresh else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"1"
    assert storage.read_bytes(url) == b"child"


def test_missing_bucket(gcs_emulator, tmp_path):
    url = "gs://no-such-bucket-for-tests/a/b.jpg"
    assert storage.list_files("gs://no-such-bucket-for-tests/a") == []
    assert not storage.exists(url)
    assert not storage.exists("gs://no-such-bucket-for-tests/a")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(url)
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        storage.write_bytes(url, b"x")
    storage.delete(url)


def test_missing_credentials_message(monkeypatch, tmp_path):
    monkeypatch.delenv(storage.EMULATOR_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    storage._client.cache_clear()  # no client cached from another environment
    message = "GOOGLE_APPLICATION_CREDENTIALS.*application-default login"
    with pytest.raises(storage.GCSCredentialsError, match=message):
        storage.gcs_client()
    with pytest.raises(storage.GCSCredentialsError, match=message):
        storage.read_bytes("gs://some-bucket/a.bin")


def test_a_memory_url_holds_a_tfrecord_set_readers_read_but_no_lock(tmp_path):
    """The generic path end to end: a manifest and shards on memory:// are read as from a local folder
    (and mirrored locally for training); a set is only published where the lock has a primitive."""
    url = _memory_url()
    manifest = schema.Manifest(classes=["a"], image_size=32, num_records=2, shards={"s-00-2.tfrec": 2})
    storage.write_bytes(storage.join(url, schema.MANIFEST_NAME), manifest.to_json().encode())
    storage.write_bytes(storage.join(url, "s-00-2.tfrec"), b"records")
    assert readers.read_manifest(url).shards == manifest.shards
    assert readers.shard_paths(url, manifest) == [f"{url}/s-00-2.tfrec"]
    cfg = OmegaConf.create({"tfrecord_dir": url, "paths": {"data_dir": str(tmp_path)}})
    local = local_tfrecord_dir(cfg)  # what training reads: a local mirror
    assert not storage.is_remote(local) and local.startswith(str(tmp_path / "cache" / "tfrecords"))
    assert readers.read_manifest(local).shards == manifest.shards
    assert (Path(local) / "s-00-2.tfrec").read_bytes() == b"records"
    with pytest.raises(dirlock.UnlockableError, match="memory:// has neither"):
        dirlock.lock_url(url)


def test_a_checkpoint_on_any_fsspec_url_is_staged_locally_and_uploaded(tmp_path):
    """``train.checkpoint_dir`` on memory:// (as on gs://): the chief's local checkpoint goes up after each
    epoch, stale files leave, and a restarted worker finds it staged locally."""
    url = _memory_url()
    chief = SharedCheckpoint(url, is_chief=True)
    assert not storage.is_remote(chief.local_dir)
    Path(chief.local_dir, "old.data").write_bytes(b"1")
    chief.upload()
    Path(chief.local_dir, "old.data").unlink()
    Path(chief.local_dir, "checkpoint").write_text("ckpt-2")
    chief.upload()
    assert sorted(storage.basename(info.path) for info in storage.list_files(url)) == ["checkpoint"]
    restarted = SharedCheckpoint(url, is_chief=False)
    assert Path(restarted.local_dir, "checkpoint").read_text() == "ckpt-2"
    for staged in (chief, restarted):
        staged.cleanup()


def test_spark_python_workers_reach_the_emulator(gcs_bucket, monkeypatch):
    """The preprocessing job calls storage inside Spark Python workers (separate processes)."""
    from pyspark.sql import SparkSession

    urls = [f"gs://{gcs_bucket}/spark/{i}.bin" for i in range(4)]
    for i, url in enumerate(urls):
        storage.write_bytes(url, bytes([i]) * (i + 1))
    session = SparkSession.getActiveSession()
    own = session is None
    if own:
        # PySpark picks the worker interpreter from $PYSPARK_PYTHON (not spark.pyspark.python);
        # the workers must run this venv's Python to import the package.
        monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[1]")
            .appName("test-storage-emulator")
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
    try:
        rows = (
            session.sparkContext.parallelize(urls, 2)
            .map(lambda u: (u, len(storage.read_bytes(u)), os.getpid()))
            .collect()
        )
    finally:
        if own:
            session.stop()
    assert sorted((u, n) for u, n, _ in rows) == [(u, i + 1) for i, u in enumerate(urls)]
    assert all(pid != os.getpid() for _, _, pid in rows)
