"""Config validation, parameter counts against the closed form, and `grn-jax model summary`."""

import re

import pytest

from grn_jax.cli import main
from grn_jax.models import AdapterConfig, ModelConfig, gremln_base, model_summary, preset, tiny
from grn_jax.models.blocks import layer_runs


def _closed_form(cfg: ModelConfig) -> int:
    """Embeddings + per layer (q,k,v,out with biases; 2 LayerNorms; MLP) + final LN + bin head."""
    d, m, half = cfg.d_model, cfg.mlp_dim, cfg.d_model // 2
    per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * m + m) + (m * d + d)
    # the cell head: cell_proj (d -> d), a d-wide query and bias per vocabulary gene, decoder (d -> n_bins,
    # or d -> 1 for the value head)
    out = cfg.n_bins if cfg.cell_head_output == "bins" else 1
    cell_head = (d * d + d) + 2 * cfg.gene_vocab_size * d + (d * out + out) if cfg.cell_head else 0
    return (cfg.gene_vocab_size * half + (cfg.n_bins + 3) * half + cfg.n_layers * per_layer
            + (2 * d if cfg.norm == "pre" else 0) + d * cfg.n_bins + cfg.n_bins + cell_head)


def test_gremln_base_parameter_count_matches_closed_form():
    cfg = gremln_base()
    s = model_summary(cfg)
    assert s.total == _closed_form(cfg) == 14_656_612
    assert s.gene_embedding == cfg.gene_vocab_size * 256
    # vocabulary-independent body: 9.54M; the paper's 10.3M implies a ~3k-gene vocabulary
    assert s.non_vocab == 9_535_844
    assert 2_900 < s.vocab_for_paper_count() < 3_100


def test_post_ln_and_vanilla_counts():
    for cfg in (tiny(norm="post"), tiny(attention="vanilla"), tiny(cell_head_output="bins"),
                tiny(n_layers=3, attention=("vanilla", "diffusion", "diffusion"))):
        assert model_summary(cfg).total == _closed_form(cfg)


def test_cli_model_summary_prints_the_count(capsys):
    assert main(["model", "summary", "--preset", "gremln_base"]) == 0
    out = capsys.readouterr().out
    total = int(re.search(r"total\s+([\d,]+)", out).group(1).replace(",", ""))
    assert total == _closed_form(gremln_base())
    assert "10.3M" in out and "20003" in out
    assert main(["model", "summary", "--preset", "gremln_base", "--gene-vocab-size", "2003"]) == 0
    out = capsys.readouterr().out
    assert int(re.search(r"total\s+([\d,]+)", out).group(1).replace(",", "")) == _closed_form(gremln_base(2003))


@pytest.mark.parametrize("kwargs,field", [
    (dict(n_heads=3), "n_heads"),
    (dict(attention=("diffusion",)), "attention"),
    (dict(attention="graph"), "attention[0]"),
    (dict(norm="sandwich"), "norm"),
    (dict(dtype="float16"), "dtype"),
    (dict(attention_impl="cuda"), "attention_impl"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(diffusion_beta=-0.1), "diffusion_beta"),
    (dict(d_model=33, n_heads=1), "d_model"),
    (dict(gene_vocab_size=3), "gene_vocab_size"),
    (dict(diffusion_order=-1), "diffusion_order"),
    (dict(adapter=AdapterConfig(fusion_heads=5)), "fusion_heads"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        tiny(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    (dict(gnn="gat"), "gnn"), (dict(aggregator="sum"), "aggregator"), (dict(fanout=0), "fanout"),
    (dict(perturb_alpha=1.5), "perturb_alpha"), (dict(perturb_mode="shuffle"), "perturb_mode"),
])
def test_adapter_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        AdapterConfig(**kwargs)


def test_config_is_hashable_with_per_layer_list():
    cfg = tiny(attention=["diffusion", "vanilla"])
    assert cfg.attention == ("diffusion", "vanilla") and hash(cfg) == hash(tiny(attention=("diffusion", "vanilla")))


def test_heat_plan_adaptive_or_fixed_order():
    from grn_jax.models import heat_plan

    assert heat_plan(tiny(diffusion_beta=0.1)).order == 4  # adaptive, tail <= 1e-8 (DESIGN.md)
    assert heat_plan(tiny(diffusion_beta=0.1, diffusion_order=64)).order == 64  # the paper's K


def test_grnformer_preset_summary_counts_the_adapter():
    s = model_summary(preset("grnformer_gremln"))
    assert {"adapter/gnn", "adapter/fusion", "adapter/ln_fusion", "adapter/ln_struct"} <= set(s.by_module)
    d = 512
    # one backbone layer fewer than gremln_base; adapter = GNN input (d/2 -> d) + 2 SAGE layers (2d -> d)
    # + cross-attention (4 d^2 + 4 d) + LayerNorms (queries; structure encodings; GNN node features, d/2)
    layer = 4 * (d * d + d) + 4 * d + (d * 2048 + 2048) + (2048 * d + d)
    gnn = 2 * (d // 2) + (d // 2 * d + d) + 2 * (2 * d * d + d)
    assert s.total == model_summary(gremln_base()).total - layer + gnn + 4 * (d * d + d) + 2 * d + 2 * d


def test_presets_and_layer_runs():
    assert gremln_base().layer_kinds == ("diffusion",) * 3
    assert preset("gremln_vanilla").layer_kinds == ("vanilla",) * 3
    assert preset("grnformer_gremln").backbone_kinds == ("diffusion",) * 2
    with pytest.raises(ValueError, match="known presets"):
        preset("gremln_huge")
    assert layer_runs(("diffusion", "diffusion", "vanilla", "diffusion")) == [("diffusion", 2), ("vanilla", 1),
                                                                             ("diffusion", 1)]
