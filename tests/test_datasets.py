"""Reading IDX files, the bundled digits, and downloads against a local HTTP server."""
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from fastnn.datasets import DataError, download_file, load_mnist, load_mnist_5k, read_idx, IMAGE_MAGIC, LABEL_MAGIC


def idx_images(images):
    n = images.shape[0]
    return (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") \
        + images.astype(np.uint8).tobytes()


def idx_labels(labels):
    return (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + np.asarray(labels, np.uint8).tobytes()


def write_mnist(folder, n_train=20, n_test=10, gz=True, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        for kind, data in (("images-idx3", idx_images(images)), ("labels-idx1", idx_labels(labels))):
            stem = f"{split}-{kind}-ubyte"
            name = stem.replace("-idx", ".idx") if dotted else stem
            files[stem] = data
            (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
        files[split] = (images, labels)
    return files


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (True, True), (False, True)])
def test_load_mnist_reads_both_spellings_gzipped_or_raw(tmp_path, gz, dotted):
    files = write_mnist(tmp_path, gz=gz, dotted=dotted)
    (X, y), (Xt, yt) = load_mnist(tmp_path)
    assert X.shape == (20, 784) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.dtype == np.int64 and Xt.shape == (10, 784)
    np.testing.assert_array_equal(X, files["train"][0].reshape(20, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(yt, files["t10k"][1])
    assert 0 <= X.min() and X.max() <= 1


def test_corrupt_files_give_errors_naming_the_file(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: .*truncated or corrupt"):
        load_mnist(tmp_path)
    path.write_bytes((2049).to_bytes(4, "big") + good[4:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: magic number 2049, expected 2051"):
        load_mnist(tmp_path)
    path.write_bytes(good[:10])
    with pytest.raises(DataError, match="too short for an IDX header"):
        load_mnist(tmp_path)
    path.write_bytes(good)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1, 2, 3]))
    with pytest.raises(DataError, match="holds 10 images but .* holds 3 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    gzpath = tmp_path / "x.gz"
    gzpath.write_bytes(gzip.compress(good)[:50])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(gzpath, IMAGE_MAGIC)
    with pytest.raises(DataError, match="is not a folder"):
        load_mnist(tmp_path / "missing")


def test_bundled_digits_split_400_100_per_class():
    (X, y), (Xt, yt) = load_mnist_5k()
    assert X.shape == (4000, 784) and Xt.shape == (1000, 784)
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(yt).tolist() == [100] * 10
    assert 0 <= X.min() and X.max() == 1.0 and X.dtype == np.float32
    # deterministic and not sorted by label any more
    (X2, y2), _ = load_mnist_5k()
    np.testing.assert_array_equal(y, y2)
    assert np.any(np.diff(y) < 0)
    # train and test images are distinct
    train_rows = {row.tobytes() for row in X}
    assert not any(row.tobytes() in train_rows for row in Xt)


class Server:
    """A file server on 127.0.0.1 for the download tests: serves ``files`` (name -> bytes);
    ``truncate`` names files whose transfer is cut short."""

    def __init__(self, files, truncate=()):
        outer = self
        self.files, self.truncate, self.requests = files, set(truncate), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(name)
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if name in outer.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def mirror_files(tmp_path, regzip=True):
    src = tmp_path / "src"
    src.mkdir()
    files = write_mnist(src)
    served = {f"{stem}.gz": gzip.compress(files[stem], compresslevel=1 if regzip else 9)
              for stem in files if "ubyte" in stem}
    checksums = {stem: hashlib.sha256(files[stem]).hexdigest() for stem in files if "ubyte" in stem}
    return served, checksums, files


def test_download_verifies_content_and_never_downloads_twice(tmp_path):
    served, checksums, files = mirror_files(tmp_path)
    cache = tmp_path / "cache"
    with Server(served) as server:
        (X, y), (Xt, yt) = load_mnist(download=True, cache_dir=cache, mirrors=[server.url], checksums=checksums)
        assert len(server.requests) == 4
        np.testing.assert_array_equal(yt, files["t10k"][1])
        load_mnist(download=True, cache_dir=cache, mirrors=[server.url], checksums=checksums)
        assert len(server.requests) == 4  # verified files are not fetched again
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no temporary files left


def test_download_rejects_a_wrong_checksum_and_keeps_nothing(tmp_path):
    served, checksums, _ = mirror_files(tmp_path)
    checksums["t10k-labels-idx1-ubyte"] = "0" * 64
    cache = tmp_path / "cache"
    with Server(served) as server, pytest.raises(DataError, match="SHA-256 of the content is .*, expected 0000"):
        load_mnist(download=True, cache_dir=cache, mirrors=[server.url], checksums=checksums)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()


def test_download_rejects_a_truncated_transfer(tmp_path):
    served, checksums, _ = mirror_files(tmp_path)
    with Server(served, truncate={"train-images-idx3-ubyte.gz"}) as server, \
            pytest.raises(DataError, match="train-images-idx3-ubyte"):
        download_file("train-images-idx3-ubyte", tmp_path / "cache", [server.url], checksums)
    assert not (tmp_path / "cache" / "train-images-idx3-ubyte.gz").exists()


def test_a_dead_mirror_is_skipped_for_a_good_one(tmp_path):
    served, checksums, _ = mirror_files(tmp_path)
    with Server({}) as dead, Server(served) as good:
        path = download_file("train-labels-idx1-ubyte", tmp_path / "cache", [dead.url, good.url], checksums)
        assert dead.requests == ["train-labels-idx1-ubyte.gz"] and good.requests == ["train-labels-idx1-ubyte.gz"]
    assert read_idx(path, LABEL_MAGIC).shape == (20,)


def test_a_corrupted_cached_file_is_fetched_again(tmp_path):
    served, checksums, _ = mirror_files(tmp_path)
    cache = tmp_path / "cache"
    with Server(served) as server:
        download_file("train-labels-idx1-ubyte", cache, [server.url], checksums)
        (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
        download_file("train-labels-idx1-ubyte", cache, [server.url], checksums)
        assert server.requests == ["train-labels-idx1-ubyte.gz"] * 2
    assert read_idx(cache / "train-labels-idx1-ubyte.gz", LABEL_MAGIC).shape == (20,)


def test_without_download_a_missing_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="download=True"):
        load_mnist()
