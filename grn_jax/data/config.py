"""Typed, validated configuration of the data pipeline: ingest, QC, tokenisation, shards.

One dataclass per concern; `DataConfig.from_dict` builds them from YAML-like
dicts and `validate()` names the bad field. Every artefact records the config
it was made with (see `grn_jax.data.shards`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


def _fail(field: str, value, why: str):
    raise ValueError(f"data config: {field}={value!r} is invalid: {why}")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Where the counts are and what they are.

    layer: a named layer of counts (None = X); use_raw: take `adata.raw.X` instead.
    gene_column: a `var` column of gene names (None = var_names; e.g. Ensembl ids).
    cell_type_column: an `obs` column with cell-type labels (needed by per-type networks).
    normalized_input: values are already normalised (e.g. log1p CPM): the integer-count
      check and the total-UMI QC bounds are skipped (and reported as skipped).
    backed: read the .h5ad in backed (on-disk) mode; None = when the file exceeds
      `backed_threshold_gb`.
    """

    layer: Optional[str] = None
    use_raw: bool = False
    gene_column: Optional[str] = None
    cell_type_column: Optional[str] = None
    normalized_input: bool = False
    backed: Optional[bool] = None
    backed_threshold_gb: float = 2.0
    integer_tolerance: float = 0.0

    def validate(self) -> None:
        if self.layer is not None and self.use_raw:
            _fail("ingest.layer", self.layer, "choose either a layer or use_raw=True, not both")
        if self.backed_threshold_gb <= 0:
            _fail("ingest.backed_threshold_gb", self.backed_threshold_gb, "must be > 0")
        if not 0 <= self.integer_tolerance < 0.5:
            _fail("ingest.integer_tolerance", self.integer_tolerance, "must be in [0, 0.5)")


@dataclasses.dataclass(frozen=True)
class QCConfig:
    """Cell QC as in GREmLN (A.2): total-UMI bounds, optional keep-middle fraction, min expressed genes.

    keep_middle: e.g. 0.9 keeps cells whose total lies within the central 90 % of
    totals (applied together with the bounds). min_genes counts expressed genes
    that are in the vocabulary (the cell's would-be tokens). None disables a bound.
    """

    min_counts: Optional[float] = 1_000
    max_counts: Optional[float] = 100_000
    keep_middle: Optional[float] = None
    min_genes: int = 500

    def validate(self) -> None:
        if self.min_counts is not None and self.min_counts < 0:
            _fail("qc.min_counts", self.min_counts, "must be >= 0 or None")
        if self.max_counts is not None and self.min_counts is not None and self.max_counts < self.min_counts:
            _fail("qc.max_counts", self.max_counts, f"must be >= qc.min_counts ({self.min_counts})")
        if self.keep_middle is not None and not 0 < self.keep_middle <= 1:
            _fail("qc.keep_middle", self.keep_middle, "must be in (0, 1] or None")
        if self.min_genes < 0:
            _fail("qc.min_genes", self.min_genes, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """Normalisation, rank binning and the token/edge budgets of a cell.

    max_genes: gene tokens per cell (CLS excluded); if more genes are expressed the
      highest bins are kept. add_neighbours: also add graph neighbours of expressed
      genes as bin-0 tokens (within max_genes). seq_buckets/edge_buckets: allowed
      padded lengths (None = powers of two from min_seq_bucket / min_edge_bucket).
    max_edges: edge budget per cell; above it the highest-weight edges are kept
      and the rest counted.
    """

    n_bins: int = 100
    target_sum: float = 1e6
    max_genes: int = 2047
    add_neighbours: bool = False
    min_seq_bucket: int = 64
    min_edge_bucket: int = 64
    seq_buckets: Optional[tuple[int, ...]] = None
    edge_buckets: Optional[tuple[int, ...]] = None
    max_edges: int = 65_536

    def validate(self) -> None:
        if self.n_bins < 2:
            _fail("tokenize.n_bins", self.n_bins, "need bin 0 plus at least one expressed bin (>= 2)")
        if self.n_bins > 32_000:
            _fail("tokenize.n_bins", self.n_bins, "shards store bins as int16: use at most 32000 bins")
        if not self.target_sum > 0:
            _fail("tokenize.target_sum", self.target_sum, "must be > 0")
        if self.max_genes < 1:
            _fail("tokenize.max_genes", self.max_genes, "must be >= 1")
        if self.max_edges < 1:
            _fail("tokenize.max_edges", self.max_edges, "must be >= 1")
        for name in ("min_seq_bucket", "min_edge_bucket"):
            if getattr(self, name) < 1:
                _fail(f"tokenize.{name}", getattr(self, name), "must be >= 1")
        for name, need in (("seq_buckets", self.max_genes + 1), ("edge_buckets", self.max_edges)):
            b = getattr(self, name)
            if b is None:
                continue
            if len(b) == 0 or list(b) != sorted(set(b)) or b[0] < 1:
                _fail(f"tokenize.{name}", b, "must be a non-empty, strictly increasing list of positive sizes")
            if b[-1] < need:
                _fail(f"tokenize.{name}", b, f"largest bucket must hold {need} (max_genes + CLS / max_edges)")


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """cells_per_shard: cells per shard folder; chunk_cells: cells processed at once (memory bound)."""

    cells_per_shard: int = 65_536
    chunk_cells: int = 512

    def validate(self) -> None:
        if self.cells_per_shard < 1:
            _fail("shards.cells_per_shard", self.cells_per_shard, "must be >= 1")
        if self.chunk_cells < 1:
            _fail("shards.chunk_cells", self.chunk_cells, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The whole data-pipeline configuration."""

    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    qc: QCConfig = dataclasses.field(default_factory=QCConfig)
    tokenize: TokenizeConfig = dataclasses.field(default_factory=TokenizeConfig)
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)

    def validate(self) -> "DataConfig":
        self.ingest.validate()
        self.qc.validate()
        self.tokenize.validate()
        self.shards.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DataConfig":
        """Build and validate from a YAML-like mapping; a wrong type (e.g. `max_genes: 300.7`) names its field."""
        from grn_jax.typed import build

        if not isinstance(d, dict):
            raise ValueError(f"data config: expected a mapping of sections (ingest, qc, tokenize, shards), got "
                             f"{type(d).__name__} {d!r}")
        kinds = {"ingest": IngestConfig, "qc": QCConfig, "tokenize": TokenizeConfig, "shards": ShardConfig}
        unknown = set(d) - set(kinds)
        if unknown:
            raise ValueError(f"data config: unknown section(s) {sorted(unknown)}; known: {sorted(kinds)}")
        parts = {}
        for name, cls in kinds.items():
            sect = d.get(name) or {}
            if not isinstance(sect, dict):
                raise ValueError(f"data config: section {name!r} must be a mapping of fields, got "
                                 f"{type(sect).__name__} {sect!r}")
            fields = {f.name for f in dataclasses.fields(cls)}
            bad = set(sect) - fields
            if bad:
                raise ValueError(f"data config: unknown field(s) {sorted(bad)} in section {name!r}; "
                                 f"known: {sorted(fields)}")
            parts[name] = build(cls, sect, f"data config: {name}")
        return DataConfig(**parts).validate()
