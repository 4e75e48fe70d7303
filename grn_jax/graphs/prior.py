"""A curated prior network (CollecTRI / DoRothEA via OmniPath), alone or merged with inferred edges.

Inferred ARACNe networks on a few hundred genes with few TFs are sparse (on the
bundled PBMC data a quarter of the gene tokens have an edge); a curated TF ->
target prior adds edges the data cannot support on its own. `merge_with_prior`
takes the union of the two edge sets:

- an edge in both keeps the inferred weight (its MI);
- a prior-only edge gets `prior_weight`, by default the median weight of the
  inferred network, so prior edges count like a typical inferred edge in the
  weighted Laplacian and the GNN rather than dominating or vanishing (unweighted
  priors carry mi = 1, on an unrelated scale);
- pairs are compared as given (regulator -> target); the graph is symmetrised later.

`with_prior(spec, prior)` applies it to one network or to a per-cell-type mapping
(each type merged with the prior; types that share a network object, such as the
fallbacks to the pooled network, still share the merged one).
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from grn_jax.types import GeneNetwork

PRIOR_MODES = ("merge", "alone")


def merge_with_prior(inferred: GeneNetwork, prior: GeneNetwork, *, prior_weight: Optional[float] = None
                     ) -> GeneNetwork:
    """Union of `inferred` and `prior` edges (module docstring); counts in the result's params."""
    reg_i, tgt_i = np.asarray(inferred.regulator).astype(str), np.asarray(inferred.target).astype(str)
    reg_p, tgt_p = np.asarray(prior.regulator).astype(str), np.asarray(prior.target).astype(str)
    if prior_weight is None:
        prior_weight = float(np.median(inferred.mi)) if inferred.num_edges else 1.0
    if not (np.isfinite(prior_weight) and prior_weight > 0):
        raise ValueError(f"prior_weight must be a positive number, got {prior_weight!r}")
    have = set(zip(reg_i.tolist(), tgt_i.tolist()))
    new = np.array([(r, t) not in have for r, t in zip(reg_p.tolist(), tgt_p.tolist())], bool)
    new &= reg_p != tgt_p
    params = {"method": "merge", "inferred": inferred.params, "prior": prior.params,
              "n_inferred": int(inferred.num_edges), "n_prior": int(prior.num_edges),
              "n_prior_also_inferred": int(prior.num_edges - new.sum()), "n_prior_added": int(new.sum()),
              "prior_weight": float(prior_weight)}
    return GeneNetwork(regulator=np.concatenate([reg_i, reg_p[new]]).astype(object),
                       target=np.concatenate([tgt_i, tgt_p[new]]).astype(object),
                       mi=np.concatenate([np.asarray(inferred.mi, np.float64), np.full(int(new.sum()), prior_weight)]),
                       pvalue=np.concatenate([np.asarray(inferred.pvalue, np.float64),
                                              np.full(int(new.sum()), np.nan)]),
                       params=params)


def with_prior(spec: Union[None, GeneNetwork, Mapping[str, GeneNetwork]], prior: GeneNetwork,
               mode: str = "merge") -> Union[GeneNetwork, dict]:
    """The graph spec for `prepare` with the prior: merged into every network, or the prior alone."""
    if mode not in PRIOR_MODES:
        raise ValueError(f"prior mode must be one of {PRIOR_MODES}, got {mode!r}")
    if mode == "alone":
        if spec is not None:
            raise ValueError("prior mode 'alone' uses the prior as the only network: do not also give "
                             "--network/--networks-dir (or use mode 'merge')")
        return prior
    if spec is None:
        raise ValueError("prior mode 'merge' needs inferred networks to merge with (--network or --networks-dir); "
                         "use mode 'alone' for the prior by itself")
    if isinstance(spec, GeneNetwork):
        return merge_with_prior(spec, prior)
    merged: dict = {}
    out = {}
    for t, net in spec.items():
        if id(net) not in merged:
            merged[id(net)] = merge_with_prior(net, prior)
        out[t] = merged[id(net)]
    return out
