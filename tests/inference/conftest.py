"""One toy run directory (shards + checkpoint) shared by the inference tests."""

import pytest

from tests.inference._run import make_run


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("inference_run"))


@pytest.fixture(scope="session")
def pretrained(toy_run):
    from grn_jax.inference import load_pretrained

    return load_pretrained(toy_run["run"])
