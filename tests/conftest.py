import os
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (_zoo, _datagen) import as plain modules

# Two cores: each pytest worker uses one thread, so `-n 2` does not oversubscribe.
torch.set_num_threads(1)


# The machine's Fashion-MNIST, as found before the session hides it (see _test_data below).
_MACHINE_FMNIST: list[Path] = []
REAL_FMNIST_TEST_IMAGES = 10000


@pytest.fixture(scope="session", autouse=True)
def _test_data(tmp_path_factory):
    """Every test reads a small generated Fashion-MNIST, never what happens to be installed on the machine.

    A deterministic copy in the real format (four gzipped IDX files, 600 train / 200 test images of learnable
    classes) is written once per worker under ``$REFCONV_DATA_DIR/fashion-mnist``, the first place
    :mod:`refconv.data.fashion_mnist` searches when no ``data_dir`` is given (subprocesses inherit it); Debian's
    package directory is hidden in-process. The few tests that need the real data ask for ``real_fashion_mnist``.
    """
    from _datagen import write_fashion_mnist

    from refconv.data import fashion_mnist as fm

    _MACHINE_FMNIST[:] = fm.candidate_dirs(None)  # the real search order, before it is changed
    root = tmp_path_factory.mktemp("refconv-data")
    write_fashion_mnist(root / "fashion-mnist", n_train=600, n_test=200)
    mp = pytest.MonkeyPatch()
    mp.setenv("REFCONV_DATA_DIR", str(root))
    mp.setattr(fm, "SYSTEM_DIR", root / "no-system-dataset")
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def real_fashion_mnist(_test_data) -> Path:
    """The directory of the machine's real Fashion-MNIST (all 70,000 images): ``make test`` provides it
    (``make data``: Debian's package where apt works, torchvision's download elsewhere). Missing, the test
    fails naming the fix; it never skips, so a verdict does not depend on what happens to be installed."""
    from refconv.data import fashion_mnist as fm

    for d in _MACHINE_FMNIST:
        if fm.find_files("test", d) is not None and fm.find_files("train", d) is not None:
            labels = fm.read_idx(fm.find_files("test", d)[1])
            if labels.shape[0] == REAL_FMNIST_TEST_IMAGES:
                return d
    searched = "\n".join(f"  - {d}" for d in _MACHINE_FMNIST)
    pytest.fail(f"this test needs the real Fashion-MNIST, found nowhere:\n{searched}\n"
                "`make data` installs (apt) or downloads (torchvision) it; `make test` runs it first.", pytrace=False)


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


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, the previous count restored after (``pytestmark = usefixtures``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
