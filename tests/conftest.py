import os
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
