"""The GRNFormer adapter carries graph structure to the tokens at initialisation.

Thresholds are derived, not tuned (benchmarks/bench_adapter.py measures the same quantities):

- entropy: for i.i.d. logits of variance s^2 over n keys, E[H] ~= log n - s^2 / 2. Unit-scale queries and
  keys (LayerNorm inputs, lecun-normal projections) give s^2 ~= 1; we require the entropy deficit of at least a
  quarter of that, H / log n <= 1 - 1 / (8 log n). Uniform attention (the old adapter: 0.99999) fails.
- graph sensitivity: rewiring both graphs (same genes, same degrees) must move the adapter output by more than
  the normwise error of a bfloat16 computation, `tolerance(bfloat16).rel`, or the graph would be invisible
  under rounding in a bf16 run (the old adapter: 1.1e-3). Reordering the edge slots of the same graph is the
  control: it must change nothing beyond `tolerance(float32).rel`.
- gradients: the softmax Jacobian scales logit gradients by ~1/sqrt(n) against value gradients; query and key
  kernels must get at least half that share, 1 / (2 sqrt(n)), of the value/output gradient (the old adapter:
  ~2e-3 at n = 48).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grn_jax.models import AdapterConfig, build_model, init_variables, tiny
from grn_jax.testing import relative_error, tolerance
from tests.models._cells import Cell, make_batch

VOCAB, N_BINS, S, E, N = 200, 8, 32, 40, 24


def _hub_cell(rng) -> Cell:
    """24 genes; 3 hubs with 6-8 leaves each plus 4 random edges; a sparser cell-specific graph."""
    def edges(hubs, degree, extra):
        out = set()
        for h in range(hubs):
            for leaf in rng.choice(np.arange(hubs, N), rng.integers(*degree), replace=False):
                out.add((h, int(leaf)))
        while extra:
            u, v = (int(x) for x in rng.choice(N, 2, replace=False))
            if (u, v) not in out and (v, u) not in out:
                out.add((u, v))
                extra -= 1
        return [(u, v, 1.0) for u, v in sorted(out)]

    genes = rng.choice(np.arange(3, VOCAB), N, replace=False).tolist()
    bins = rng.integers(1, N_BINS, N).tolist()
    loss = sorted(rng.choice(N, 7, replace=False).tolist())
    return Cell(genes, bins, edges(3, (6, 9), 4), edges(2, (3, 5), 2), loss=loss)


def _rewired(rng, cell: Cell) -> Cell:
    """Degree-preserving rewiring of both graphs by double-edge swaps."""
    import networkx as nx

    def swap(edges):
        g = nx.Graph([(u, v) for u, v, _ in edges])
        nx.double_edge_swap(g, nswap=10 * g.number_of_edges(), max_tries=10**6, seed=int(rng.integers(2**31)))
        return [(u, v, 1.0) for u, v in sorted(g.edges())]

    return Cell(cell.genes, cell.bins, swap(cell.edges), swap(cell.cell_edges), loss=cell.loss)


def _cells(seed=0):
    rng = np.random.default_rng(seed)
    return [_hub_cell(rng) for _ in range(4)], rng


@functools.lru_cache(maxsize=None)
def _setup():
    # vanilla backbone: h_expr does not see the graph, so every graph effect comes through the adapter
    cfg = tiny(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=32, n_layers=2, n_heads=4, mlp_dim=64,
               attention="vanilla", adapter=AdapterConfig(fanout=10, fusion_heads=4))
    model = build_model(cfg)
    cells, _ = _cells()
    variables = init_variables(model, jax.random.key(0), make_batch(cells, S, E, N_BINS, cell_graph=True))

    @jax.jit
    def capture(v, b):
        _, state = model.apply(v, b, deterministic=True, mutable=["intermediates"],
                               capture_intermediates=lambda mdl, _: mdl.name == "adapter")
        inter = state["intermediates"]["adapter"]
        return inter["__call__"][0], inter["fusion"]["weights"][0]

    return model, variables, capture


def _genes(batch):
    return np.asarray(batch.token_mask) & (np.arange(S) > 0)[None, :]


def test_fusion_attention_is_not_uniform_at_init():
    _, variables, capture = _setup()
    cells, _ = _cells()
    batch = make_batch(cells, S, E, N_BINS, cell_graph=True)
    _, w_BxHxSxT = capture(variables, batch)
    w = np.asarray(w_BxHxSxT, np.float64).transpose(0, 2, 1, 3)[_genes(batch)]  # [queries, H, T]
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=tolerance(jnp.float32).rtol)
    assert np.all(w[..., N + 1:] == 0) and np.all(w[..., 0] == 0)  # keys: the cell's genes only
    ent = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=-1)
    ratio = ent.mean() / np.log(N)
    assert ratio <= 1 - 1 / (8 * np.log(N)), ratio


def test_rewiring_the_graph_changes_the_adapter_output():
    _, variables, capture = _setup()
    cells, rng = _cells()
    batch = make_batch(cells, S, E, N_BINS, cell_graph=True)
    genes = _genes(batch)
    h = np.asarray(capture(variables, batch)[0])[genes]
    rewired = np.asarray(capture(variables, make_batch([_rewired(rng, c) for c in cells], S, E, N_BINS,
                                                       cell_graph=True))[0])[genes]
    assert relative_error(rewired, h) > tolerance(jnp.bfloat16).rel
    # control: the same graphs with their edge slots reversed
    same = [Cell(c.genes, c.bins, c.edges[::-1], c.cell_edges[::-1], loss=c.loss) for c in cells]
    h_same = np.asarray(capture(variables, make_batch(same, S, E, N_BINS, cell_graph=True))[0])[genes]
    assert relative_error(h_same, h) <= tolerance(jnp.float32).rel


def test_query_and_key_get_a_real_share_of_the_gradient():
    model, variables, _ = _setup()
    cells, _ = _cells()
    batch = make_batch(cells, S, E, N_BINS, cell_graph=True)

    def loss(params):
        out = model.apply({**variables, "params": params}, batch, deterministic=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.bin_logits, jnp.asarray(batch.targets))
        m = jnp.asarray(batch.loss_mask, jnp.float32)
        return (ce * m).sum() / m.sum()

    fus = jax.jit(jax.grad(loss))(variables["params"])["adapter"]["fusion"]
    norm = {k: float(jnp.linalg.norm(jnp.ravel(fus[k]["kernel"].value))) for k in ("query", "key", "value", "out")}
    assert min(norm.values()) > 0
    assert min(norm["query"], norm["key"]) / max(norm["value"], norm["out"]) >= 1 / (2 * np.sqrt(N)), norm


def test_token_node_features_carry_neighbours_expression_gene_features_do_not():
    """With no backbone layer (the adapter is the only one) position i sees gene j's bin only through the GNN."""
    cells, _ = _cells()
    batch = make_batch(cells, S, E, N_BINS, cell_graph=True)
    i, j = 5, 1  # gene tokens; j is a hub (gene index 0) with its bin changed, never masked here
    assert j - 1 not in cells[0].loss and i - 1 not in cells[0].loss
    bins = np.asarray(batch.bins).copy()
    bins[0, j] = 1 + (bins[0, j] % (N_BINS - 1))
    moved = batch.replace(bins=bins)
    change = {}
    for feats in ("gene", "token"):
        cfg = tiny(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=32, n_layers=1, n_heads=4, mlp_dim=64,
                   attention="vanilla", adapter=AdapterConfig(fanout=10, fusion_heads=4, node_features=feats))
        model = build_model(cfg)
        v = init_variables(model, jax.random.key(0), batch)
        fwd = jax.jit(lambda v, b: model.apply(v, b, deterministic=True).hidden)
        change[feats] = relative_error(np.asarray(fwd(v, moved))[0, i], np.asarray(fwd(v, batch))[0, i])
    assert change["gene"] <= tolerance(jnp.float32).rel  # identity-only structure: bin j cannot reach i
    assert change["token"] > tolerance(jnp.bfloat16).rel


def test_node_features_choice_is_validated():
    import pytest

    with pytest.raises(ValueError, match="node_features"):
        AdapterConfig(node_features="expression")
