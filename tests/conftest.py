"""Shared fixtures: real MNIST, converted once into the user's cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mnist():
    from tasks.mnist.data import load_mnist

    return load_mnist()
