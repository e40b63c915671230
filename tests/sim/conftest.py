import pytest

from helix.specs.model import builtin_model


@pytest.fixture
def model():
    return builtin_model("llama-2-70b")
