"""Gene vocabulary: PAD, MASK, CLS then genes; symbols and/or Ensembl ids; saved with every artefact.

A gene absent from the vocabulary is never mapped to a fallback id: `lookup`
returns -1 for it and the caller counts and reports it.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

import numpy as np

from grn_jax._io import atomic_write_text, read_json
from grn_jax.types import GENE_CLS, GENE_MASK, GENE_PAD, GENE_SPECIAL_TOKENS

NUM_SPECIAL = len(GENE_SPECIAL_TOKENS)


class GeneVocab:
    """Gene token ids: 0 PAD, 1 MASK, 2 CLS, genes from 3 in the given order.

    `aliases` maps other identifiers (e.g. Ensembl ids) to a gene's primary name,
    so data keyed by either finds the same id.
    """

    def __init__(self, genes: Sequence[str], aliases: Optional[Mapping[str, str]] = None):
        genes = [str(g) for g in genes]
        if len(genes) == 0:
            raise ValueError("GeneVocab needs at least one gene")
        seen: dict[str, int] = {}
        for i, g in enumerate(genes):
            if g in GENE_SPECIAL_TOKENS:
                raise ValueError(f"gene {i} is named {g!r}, a reserved special token; rename it")
            if g in seen:
                raise ValueError(f"gene name {g!r} appears twice in the vocabulary (positions {seen[g]} and {i}); "
                                 "make gene names unique (e.g. anndata's var_names_make_unique) or key by Ensembl id")
            seen[g] = i
        self.genes = genes
        self._id = {g: i + NUM_SPECIAL for i, g in enumerate(genes)}
        self.aliases = {str(k): str(v) for k, v in (aliases or {}).items()}
        for alias, primary in self.aliases.items():
            if primary not in self._id:
                raise ValueError(f"alias {alias!r} points to {primary!r}, which is not a vocabulary gene")
            if alias in self._id and alias != primary:
                raise ValueError(f"alias {alias!r} is also a primary gene name; aliases must not shadow genes")

    @staticmethod
    def from_names(symbols: Sequence[str], ensembl_ids: Optional[Sequence[str]] = None) -> "GeneVocab":
        """Vocabulary over `symbols`, with `ensembl_ids` (same order) as aliases when given."""
        aliases = None
        if ensembl_ids is not None:
            if len(ensembl_ids) != len(symbols):
                raise ValueError(f"ensembl_ids has {len(ensembl_ids)} entries, symbols has {len(symbols)}")
            aliases = {str(e): str(s) for e, s in zip(ensembl_ids, symbols) if str(e) != str(s)}
        return GeneVocab(symbols, aliases)

    def __len__(self) -> int:
        return NUM_SPECIAL + len(self.genes)

    @property
    def tokens(self) -> list[str]:
        """All tokens by id (specials first); index = vocabulary id."""
        return list(GENE_SPECIAL_TOKENS) + self.genes

    @property
    def pad_id(self) -> int:
        return GENE_PAD

    @property
    def mask_id(self) -> int:
        return GENE_MASK

    @property
    def cls_id(self) -> int:
        return GENE_CLS

    def lookup(self, names: Sequence[str]) -> np.ndarray:
        """int32 ids of `names` (primary names or aliases); -1 where a name is not in the vocabulary."""
        out = np.empty(len(names), np.int32)
        for i, n in enumerate(names):
            n = str(n)
            n = self.aliases.get(n, n)
            out[i] = self._id.get(n, -1)
        return out

    def to_dict(self) -> dict:
        return {"special_tokens": list(GENE_SPECIAL_TOKENS), "genes": self.genes, "aliases": self.aliases}

    @staticmethod
    def from_dict(d: Mapping) -> "GeneVocab":
        if not isinstance(d, Mapping):
            raise ValueError(f"a vocabulary must be a JSON object with a 'genes' list, got {type(d).__name__}")
        if not isinstance(d.get("genes"), list):
            raise ValueError("the vocabulary has no 'genes' list (keys: "
                             f"{sorted(d)[:10]}); expected {{'genes': [...], 'aliases': {{...}}}} as written by "
                             "`grn-jax prepare` (OUT/manifest.json holds it under 'vocab')")
        if not isinstance(d.get("aliases") or {}, Mapping):
            raise ValueError(f"the vocabulary's 'aliases' must map identifiers to gene names, got "
                             f"{type(d['aliases']).__name__}")
        special = list(d.get("special_tokens", GENE_SPECIAL_TOKENS))
        if special != list(GENE_SPECIAL_TOKENS):
            raise ValueError(f"vocabulary special tokens {special} differ from this library's {GENE_SPECIAL_TOKENS}")
        return GeneVocab(d["genes"], d.get("aliases"))

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()))

    @staticmethod
    def load(path) -> "GeneVocab":
        try:
            return GeneVocab.from_dict(read_json(path, "vocabulary file"))
        except ValueError as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"vocabulary file {str(path)!r}: {e}") from e

    def __eq__(self, other) -> bool:
        return isinstance(other, GeneVocab) and self.to_dict() == other.to_dict()
