"""Logical axis names: modules name these; `grn_jax.train.sharding` maps them to mesh axes.

Declared once here (bottom of the dependency graph) so models annotate
parameters and activations without knowing the mesh (STYLE.md §4).
"""

BATCH = "batch"        # cells in a batch
GENES = "genes"        # token / sequence positions
EMBED = "embed"        # model width
HEADS = "heads"        # attention heads
HEAD_DIM = "head_dim"  # per-head width
MLP = "mlp"            # feed-forward hidden width
VOCAB = "vocab"        # gene / bin vocabulary rows
EDGES = "edges"        # edge slots of per-cell graphs
CLASSES = "classes"    # output classes of a head (bins, labels)

ALL = (BATCH, GENES, EMBED, HEADS, HEAD_DIM, MLP, VOCAB, EDGES, CLASSES)
