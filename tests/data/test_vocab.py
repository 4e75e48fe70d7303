"""Gene vocabulary: fixed special ids, symbols and Ensembl aliases, no silent mapping, round trip."""

import numpy as np
import pytest

from grn_jax.data import GeneVocab
from grn_jax.types import GENE_CLS, GENE_MASK, GENE_PAD


def test_ids_aliases_and_missing(tmp_path):
    v = GeneVocab.from_names(["TP53", "GATA1"], ensembl_ids=["ENSG00000141510", "ENSG00000102145"])
    assert (v.pad_id, v.mask_id, v.cls_id) == (GENE_PAD, GENE_MASK, GENE_CLS) == (0, 1, 2)
    assert len(v) == 5 and v.tokens == ["<pad>", "<mask>", "<cls>", "TP53", "GATA1"]
    np.testing.assert_array_equal(v.lookup(["GATA1", "ENSG00000141510", "MYC"]), [4, 3, -1])
    v.save(tmp_path / "v.json")
    assert GeneVocab.load(tmp_path / "v.json") == v


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="'A' appears twice"):
        GeneVocab(["A", "B", "A"])
    with pytest.raises(ValueError, match="reserved special token"):
        GeneVocab(["<cls>"])
    with pytest.raises(ValueError, match="not a vocabulary gene"):
        GeneVocab(["A"], aliases={"ENSG1": "B"})
