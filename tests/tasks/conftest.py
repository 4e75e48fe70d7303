"""Session fixtures: simulated data and two tiny runs (GDKA and vanilla) shared by the task tests."""

import pytest

from tests.tasks._toy import make_run, pretraining_cells, simulated


@pytest.fixture(scope="session")
def sim():
    return simulated()


@pytest.fixture(scope="session")
def runs(sim, tmp_path_factory):
    from grn_jax.inference import GraphSpec, load_pretrained

    root = tmp_path_factory.mktemp("task_runs")
    train = pretraining_cells()  # other cells than `sim`'s: the evaluations score only cells never trained on
    gdka = make_run(root, sim, attention="diffusion", name="gdka", train_adata=train)
    van = make_run(root, sim, attention="vanilla", name="vanilla", train_adata=train)
    graph = GraphSpec(network=str(gdka["network"]))
    return {"gdka": load_pretrained(gdka["run"]), "vanilla": load_pretrained(van["run"]), "graph": graph,
            "network": gdka["network"], "root": root, "train_adata": train}
