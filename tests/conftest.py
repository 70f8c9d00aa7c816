import os
import socket
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (_zoo, _datagen) import as plain modules

# Two cores: each pytest worker uses one thread, so `-n 2` does not oversubscribe.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def faults():
    """Fault injection on real runs (``tests/_faults.py``): ``faults.crash_after(n)`` etc.; removed after the test."""
    import _faults

    yield _faults
    _faults.clear()


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every internet connection (loopback and Unix sockets still work): tests never download."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network disabled in tests")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
