"""Does the GRNFormer adapter carry graph structure to the tokens? Measured at initialisation.

    .venv/bin/python benchmarks/bench_adapter.py            # writes benchmarks/results/adapter.{md,json}
    .venv/bin/python benchmarks/bench_adapter.py --tag before --no-write   # print only

Cells: 48 expressed genes each (S = 64 with CLS and padding), a graph with hubs
(4 hubs of degree 8-10 plus a few random edges) as the cell-type graph and a
sparser one as the cell-specific graph. For each of several init seeds:

- entropy ratio     mean over heads and real query genes of H(a_i) / log(n_keys); 1 = uniform;
- fusion share      ||beta h_fusion|| / ||h_expr|| over real gene tokens (h_expr = adapter input);
- within-cell const ||mean_i h_fusion_i||^2 n / sum_i ||h_fusion_i||^2 (1 = every token gets the same vector);
- graph sensitivity ||h(G) - h(G')|| / ||h(G)|| of the adapter output over gene tokens, G' a
                    degree-preserving rewiring of both graphs (same genes, same degrees); the same for
                    the fusion term alone (||f(G) - f(G')|| / ||f(G)||) and for the bin logits;
- grad ratio        ||dL/dW|| of the fusion query and key kernels over those of value and out
                    (L = masked-bin cross-entropy, 30 % of genes masked).

The backbone is vanilla, so h_expr does not depend on the graph and every
change comes through the adapter. Medians over seeds are reported. Figures are properties of the initial
function, not of training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grn_jax.models import AdapterConfig, build_model, init_variables, tiny  # noqa: E402
from grn_jax.types import GENE_CLS, GENE_PAD, BinSpec, GraphBatch, TokenBatch  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB, N_BINS, S, E, N_GENES, B = 400, 32, 64, 96, 48, 8


def hub_edges(rng, n, hubs=4, degree=(8, 11), extra=6):
    """Undirected edge list over gene indices 0..n-1: `hubs` hubs with `degree` leaves each + random edges."""
    edges = set()
    for h in range(hubs):
        for leaf in rng.choice(np.setdiff1d(np.arange(n), np.arange(hubs)), rng.integers(*degree), replace=False):
            edges.add((h, int(leaf)))
    while extra > 0:
        u, v = (int(x) for x in rng.choice(n, 2, replace=False))
        if (u, v) not in edges and (v, u) not in edges:
            edges.add((u, v))
            extra -= 1
    return sorted(edges)


def rewire(rng, edges, swaps_per_edge=10):
    """Degree-preserving rewiring by double-edge swaps (networkx), same node set."""
    import networkx as nx  # noqa: PLC0415

    g = nx.Graph(edges)
    nx.double_edge_swap(g, nswap=swaps_per_edge * g.number_of_edges(), max_tries=10**6,
                        seed=int(rng.integers(2**31)))
    return sorted(g.edges())


def make_batch(rng, graphs, cell_graphs, mask_rate=0.3):
    spec = BinSpec(N_BINS)
    gene_ids = np.full((B, S), GENE_PAD, np.int32)
    bins = np.full((B, S), spec.pad_id, np.int32)
    targets = np.zeros((B, S), np.int32)
    loss_mask = np.zeros((B, S), bool)
    token_mask = np.zeros((B, S), bool)
    for i in range(B):
        gene_ids[i, 0], bins[i, 0] = GENE_CLS, spec.cls_id
        token_mask[i, : N_GENES + 1] = True
        gene_ids[i, 1: N_GENES + 1] = rng.choice(np.arange(3, VOCAB), N_GENES, replace=False)
        true = rng.integers(1, N_BINS, N_GENES)
        bins[i, 1: N_GENES + 1] = true
        m = rng.random(N_GENES) < mask_rate
        targets[i, 1: N_GENES + 1] = true
        loss_mask[i, 1: N_GENES + 1] = m
        bins[i, 1: N_GENES + 1][m] = spec.mask_id

    def graph(lists):
        snd, rcv = np.zeros((B, E), np.int32), np.zeros((B, E), np.int32)
        w, msk = np.zeros((B, E), np.float32), np.zeros((B, E), bool)
        for i, edges in enumerate(lists):
            assert len(edges) <= E
            for e, (u, v) in enumerate(edges):
                snd[i, e], rcv[i, e], w[i, e], msk[i, e] = u + 1, v + 1, 1.0, True
        return GraphBatch(senders=snd, receivers=rcv, weights=w, edge_mask=msk)

    return TokenBatch(gene_ids=gene_ids, bins=bins, targets=targets, loss_mask=loss_mask, token_mask=token_mask,
                      graph=graph(graphs), cell_graph=graph(cell_graphs))


def with_graphs(batch, graphs, cell_graphs):
    other = make_batch(np.random.default_rng(0), graphs, cell_graphs)
    return batch.replace(graph=other.graph, cell_graph=other.cell_graph)


def config(d_model, heads):
    return tiny(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=d_model, n_layers=2, n_heads=heads,
                mlp_dim=2 * d_model, attention="vanilla",
                adapter=AdapterConfig(gnn="sage", fanout=10, fusion_heads=heads, perturb_alpha=0.2))


def _captured(model, variables, batch):
    """(adapter output h, fusion output f, fusion weights w, bin logits)."""
    def keep(mdl, _method):
        return mdl.name in ("adapter", "fusion")

    out, state = model.apply(variables, batch, deterministic=True, capture_intermediates=keep,
                             mutable=["intermediates"])
    inter = state["intermediates"]["adapter"]
    (h,) = inter["__call__"]
    (f,) = inter["fusion"]["__call__"]
    (w,) = inter["fusion"]["weights"]
    return h, f, w, out.bin_logits


class Probe:
    """One model config, its jitted capture and gradient functions (compiled once, reused across seeds)."""

    def __init__(self, d_model, heads):
        self.cfg = config(d_model, heads)
        self.model = build_model(self.cfg)
        model = self.model
        self.capture = jax.jit(lambda v, b: _captured(model, v, b))

        def loss(params, variables, batch):
            out = model.apply({**variables, "params": params}, batch, deterministic=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.bin_logits.astype(jnp.float32),
                                                                 jnp.asarray(batch.targets))
            m = jnp.asarray(batch.loss_mask, jnp.float32)
            return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)

        self.grad = jax.jit(jax.grad(loss))


def measure(probe: Probe, seed):
    rng = np.random.default_rng(seed)
    graphs = [hub_edges(rng, N_GENES) for _ in range(B)]
    cell_graphs = [hub_edges(rng, N_GENES, hubs=2, degree=(4, 7), extra=3) for _ in range(B)]
    batch = make_batch(rng, graphs, cell_graphs)
    rewired = with_graphs(batch, [rewire(rng, g) for g in graphs], [rewire(rng, g) for g in cell_graphs])
    variables = init_variables(probe.model, jax.random.key(seed), batch)
    h, f, w, logits = (np.asarray(x, np.float64) for x in probe.capture(variables, batch))
    h2, f2, _, logits2 = (np.asarray(x, np.float64) for x in probe.capture(variables, rewired))
    genes = np.asarray(batch.token_mask) & (np.arange(S) > 0)[None, :]
    beta = probe.cfg.adapter.fusion_beta
    h_expr = h - beta * f
    # entropy over the real keys (the cell's genes)
    wq = w.transpose(0, 2, 1, 3)[genes].reshape(-1, S)  # rows: (gene query, head)
    ent = -(np.where(wq > 0, wq * np.log(np.where(wq > 0, wq, 1.0)), 0.0)).sum(-1)
    ratio = float(ent.mean() / np.log(N_GENES))
    share = float(np.linalg.norm(beta * f[genes]) / np.linalg.norm(h_expr[genes]))
    fc = f[:, 1: N_GENES + 1]
    const = float(np.mean([np.sum(fc[b].mean(0) ** 2) * N_GENES / np.sum(fc[b] ** 2) for b in range(B)]))
    sens_h = float(np.linalg.norm(h[genes] - h2[genes]) / np.linalg.norm(h[genes]))
    sens_f = float(np.linalg.norm(f[genes] - f2[genes]) / np.linalg.norm(f[genes]))
    sens_logits = float(np.linalg.norm(logits[genes] - logits2[genes]) / np.linalg.norm(logits[genes]))
    grads = probe.grad(variables["params"], variables, batch)
    fus = grads["adapter"]["fusion"]
    norm = {k: float(jnp.linalg.norm(jnp.ravel(jax.tree_util.tree_leaves(fus[k]["kernel"])[0])))
            for k in ("query", "key", "value", "out")}
    grad_ratio = min(norm["query"], norm["key"]) / max(norm["value"], norm["out"])
    return dict(entropy_ratio=ratio, fusion_share=share, within_cell_constant=const,
                graph_sensitivity_hidden=sens_h, graph_sensitivity_rel_fusion=sens_f,
                graph_sensitivity_logits=sens_logits, grad_ratio_qk_over_vo=grad_ratio,
                grad_norms=norm)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tag", default="current")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for d_model, heads in ((32, 2), (128, 4)):
        probe = Probe(d_model, heads)
        per_seed = [measure(probe, s) for s in range(args.seeds)]
        keys = [k for k in per_seed[0] if k != "grad_norms"]
        med = {k: float(np.median([r[k] for r in per_seed])) for k in keys}
        rows.append(dict(d_model=d_model, heads=heads, seeds=args.seeds, **med,
                         per_seed=per_seed))
        print(json.dumps({"d_model": d_model, "heads": heads, **{k: round(v, 5) for k, v in med.items()}}))
    if args.no_write:
        return
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "adapter.json")
    prev = json.load(open(path)) if os.path.exists(path) else {}
    prev[args.tag] = rows
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(prev, fh, indent=1)
    os.replace(tmp, path)
    lines = ["# GRNFormer adapter at initialisation: does the graph reach the tokens?", "",
             "`.venv/bin/python benchmarks/bench_adapter.py --tag <tag>`; medians over seeds; "
             "B = 8 cells x 48 genes, hub graphs, G' = degree-preserving rewiring.", "",
             "| tag | d_model | entropy/log n | fusion share | within-cell const | "
             "sens. h | sens. f | sens. logits | grad q,k / v,o |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tag, tag_rows in prev.items():
        for r in tag_rows:
            lines.append(f"| {tag} | {r['d_model']} | {r['entropy_ratio']:.5f} | {r['fusion_share']:.4f} | "
                         f"{r['within_cell_constant']:.4f} | {r['graph_sensitivity_hidden']:.2e} | "
                         f"{r['graph_sensitivity_rel_fusion']:.3f} | {r['graph_sensitivity_logits']:.2e} | "
                         f"{r['grad_ratio_qk_over_vo']:.2e} |")
    tmp = os.path.join(RESULTS, "adapter.md.tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(RESULTS, "adapter.md"))


if __name__ == "__main__":
    main()
