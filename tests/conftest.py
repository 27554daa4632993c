import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")

settings.register_profile(
    "ci", deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config):
    config.addinivalue_line("markers", "tvm: needs Apache TVM")
    config.addinivalue_line("markers", "torch: needs PyTorch")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
