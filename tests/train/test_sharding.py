"""Mesh construction, the logical->mesh rules, and one step on many meshes equal to one device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grn_jax.testing import assert_allclose
from grn_jax.train import sharding as sh
from grn_jax.train.config import MeshConfig, TrainConfig
from tests.train.test_step import SMOOTH
from grn_jax.train.optim import make_optimizer
from grn_jax.train.state import init_sharded_state
from grn_jax.train.step import jit_train_step, make_train_step
from tests.train import toy


def test_mesh_fill_and_errors():
    assert sh.resolve_mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sh.resolve_mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 8)["fsdp"] == 8
    with pytest.raises(ValueError, match="needs 12 devices but 8"):
        sh.resolve_mesh_shape(MeshConfig(data=3, fsdp=2, tensor=2), 8)
    with pytest.raises(ValueError, match="does not divide"):
        sh.resolve_mesh_shape(MeshConfig(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(ValueError, match="mesh.tensor"):
        MeshConfig(tensor=0)
    mesh = sh.make_mesh(MeshConfig(2, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def _one_step(shape, cfg, batch):
    model = toy.ToyModel()
    tx = make_optimizer(cfg)
    mesh = sh.make_mesh(MeshConfig(*shape), jax.devices()[: int(np.prod(shape))])
    init = init_sharded_state(toy.toy_init(model, batch), tx, mesh, jax.random.key(0))
    step = jit_train_step(make_train_step(toy.toy_apply(model), toy.toy_mask(), tx, cfg), init.shardings, batch,
                          mesh)
    state, metrics = step(init.state, sh.global_batch(batch, mesh))
    return state, jax.device_get(metrics), init


def _initial_w1():
    batch = toy.toy_batch(8)
    return np.asarray(toy.ToyModel().init(jax.random.key(0), batch)["params"]["w1"].unbox())


@pytest.fixture(scope="module")
def reference():
    cfg = TrainConfig(steps=10, batch_size=8, optim=SMOOTH)
    batch = toy.toy_batch(8)
    state, metrics, init = _one_step((1, 1, 1), cfg, batch)
    params = jax.device_get(state.params)
    assert not np.allclose(params["w1"], _initial_w1())  # the step moved the parameters
    return cfg, batch, params, metrics


@pytest.mark.parametrize("shape", [
    (2, 2, 2),  # all three axes at once in the fast tier; the pure layouts are `make test-slow`
    pytest.param((1, 1, 8), marks=pytest.mark.slow), pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((1, 8, 1), marks=pytest.mark.slow)])
def test_one_step_on_mesh_equals_single_device(reference, shape):
    cfg, batch, ref_params, ref_metrics = reference
    state, metrics, init = _one_step(shape, cfg, batch)
    assert_allclose(metrics["loss"], ref_metrics["loss"], np.float32, err_msg=f"loss on {shape}")
    got = jax.device_get(state.params)
    for name in ref_params:
        assert_allclose(got[name], ref_params[name], np.float32, err_msg=f"{name} on mesh {shape}")
    # the layout is the rules table's: embed over fsdp, heads/mlp over tensor (where they divide)
    if shape == (2, 2, 2):
        assert state.params["w1"].sharding.spec == P("fsdp", "tensor")
        assert state.params["wq"].sharding.spec == P("fsdp", "tensor", None)
        assert state.params["gene_emb"].sharding.spec == P(None, "fsdp")
        mu = state.opt_state[1][0].mu  # AdamW first moment mirrors the parameter layout
        assert mu["w1"].sharding.spec == P("fsdp", "tensor")
        assert init.n_unfitted == 0


def test_activation_rules_keep_batch_on_data_and_fsdp():
    rules = dict(sh.LOGICAL_AXIS_RULES)
    assert rules["batch"] == ("data", "fsdp")
    import flax.linen as nn

    spec = nn.logical_to_mesh_axes(("batch", "genes", "embed"), sh.LOGICAL_AXIS_RULES)
    assert spec == P(("data", "fsdp"), None, None)  # embed gives fsdp up to the batch in activations
    mesh = sh.make_mesh(MeshConfig(2, 2, 2))
    arr = sh.global_batch(toy.toy_batch(8), mesh)
    assert arr.gene_ids.sharding.spec == P(("data", "fsdp"))
    assert arr.gene_ids.addressable_shards[0].data.shape == (2, 8)


def test_fsdp8_parameter_memory_is_an_eighth():
    batch = toy.toy_batch(8)
    cfg = TrainConfig(steps=10, batch_size=8)
    model = toy.ToyModel()
    mesh = sh.make_mesh(MeshConfig(1, 8, 1))
    init = init_sharded_state(toy.toy_init(model, batch), make_optimizer(cfg), mesh, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(init.state.params)
    total = sum(x.nbytes for x in leaves)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
    # every parameter with an embed dimension is split 8 ways; only the mlp bias (32 floats) stays whole
    assert per_device == (total - 32 * 4) // 8 + 32 * 4
    assert abs(per_device / total - 1 / 8) < 0.02


def test_indivisible_dimensions_are_replicated_and_counted():
    mesh = sh.make_mesh(MeshConfig(1, 1, 8))
    from jax.sharding import NamedSharding

    fitted, dropped = sh.fit_sharding_to_shape(NamedSharding(mesh, P("fsdp", "tensor")), (16, 5))
    assert fitted.spec == P("fsdp", None) and dropped == 1
    fitted, dropped = sh.fit_sharding_to_shape(NamedSharding(mesh, P()), (16, 5))
    assert fitted.spec == P(None, None) and dropped == 0


def test_indivisible_heads_and_mlp_warn_naming_the_parameter_and_axis():
    import warnings

    from grn_jax.models.config import tiny
    from grn_jax.train.model_fns import model_fns

    _, init_params, _ = model_fns(tiny(d_model=32, n_heads=2, mlp_dim=30))
    abstract = jax.eval_shape(init_params, jax.random.key(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, n_unfitted = sh.param_shardings(abstract, sh.make_mesh(MeshConfig(1, 2, 4)))
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages  # one warning per (dimension, axis), not one per parameter
    heads, mlp = messages
    assert "dimension 'heads' of size 2 is not divisible by mesh axis tensor=4" in heads
    assert "encoder/layers_0/attention/query/kernel" in heads and "model.n_heads divisible by 4" in heads
    assert "dimension 'mlp' of size 30 is not divisible by mesh axis tensor=4" in mlp
    assert "encoder/layers_0/mlp/wi/kernel" in mlp and "model.mlp_dim divisible by 4" in mlp
    assert n_unfitted == 4 + 3  # q, k, v, out kernels (heads); wi kernel + bias, wo kernel (mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mesh that divides everything: silent
        sh.param_shardings(abstract, sh.make_mesh(MeshConfig(1, 4, 2)))


def test_large_parameters_without_an_embed_axis_still_split_over_fsdp():
    from jax.sharding import NamedSharding

    mesh = sh.make_mesh(MeshConfig(1, 4, 2))
    table = NamedSharding(mesh, P(None, "tensor"))  # e.g. [vocab, mlp]: the rules give it no fsdp axis
    assert sh.add_fsdp_fallback(table, (4096, 32)).spec == P("fsdp", "tensor")  # the largest dimension
    # a vocabulary of 20,003 rows does not split 4 ways: the next dimension takes fsdp after tensor
    assert sh.add_fsdp_fallback(table, (20003, 512)).spec == P(None, ("tensor", "fsdp"))
    assert sh.add_fsdp_fallback(table, (64, 32)).spec == P(None, "tensor")  # small: left as annotated
    already = NamedSharding(mesh, P("fsdp", "tensor"))
    assert sh.add_fsdp_fallback(already, (4096, 32)) is already
    assert sh.add_fsdp_fallback(table, (4099, 33)) is table  # nothing divides: unchanged
