"""A tiny GDKA model memorises the masked bins of a few fixed cells (the model can learn)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grn_jax.models import build_model, init_variables, tiny
from tests.models._cells import make_batch, random_cell

VOCAB, N_BINS = 64, 8


def _masked_ce(logits_BxSxC, targets_BxS, loss_mask_BxS):
    """Local masked-bin cross-entropy (the project's loss lives in grn_jax.train)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxSxC, targets_BxS)
    m = loss_mask_BxS.astype(jnp.float32)
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


def test_tiny_gdka_model_overfits_masked_bins():
    rng = np.random.default_rng(0)
    cells = []
    for n, e in ((10, 12), (12, 14), (9, 8), (11, 10)):
        c = random_cell(rng, n, VOCAB, N_BINS, e)
        c.loss = sorted(rng.choice(n, size=max(1, int(0.3 * n)), replace=False).tolist())
        cells.append(c)
    batch = make_batch(cells, 16, 16, N_BINS)
    model = build_model(tiny(gene_vocab_size=VOCAB, n_bins=N_BINS, d_model=32, n_layers=2, n_heads=4,
                             mlp_dim=64, attention="diffusion", diffusion_beta=0.5))
    params = init_variables(model, jax.random.key(0), batch)["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss_fn(p):
        out = model.apply({"params": p}, batch, deterministic=True)
        return _masked_ce(out.bin_logits, batch.targets, batch.loss_mask)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(40):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[0] > 1.5  # ~ln(8) at initialisation
    assert losses[-1] < 0.1 * losses[0], losses[::5]
