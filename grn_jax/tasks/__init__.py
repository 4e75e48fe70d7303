"""grn_jax.tasks: downstream evaluations of frozen (and fine-tuned) checkpoints, with baselines in the same run.

Each `evaluate_*` takes a checkpoint (run directory, export folder or `Pretrained`)
and data (an .h5ad path or AnnData) and returns a `TaskResult` whose `write(dir)`
gives `<task>.json` + `<task>.md` (`grn-jax eval TASK ...`):

- `evaluate_annotation`: cell-type annotation, PCA-50 + logistic-regression and vanilla baselines (GREmLN §4.2);
- `evaluate_edge_prediction`: masked edge prediction, AUROC / AP with bootstrap CIs (GREmLN §4.3);
- `evaluate_probe`: expression reconstruction linear probe, R² (GREmLN A.7);
- `evaluate_reverse_perturbation`: which gene was knocked out, frozen / fine-tuned vs lasso (GREmLN §4.5);
- `evaluate_perturbation_response`: post-knockout expression change, PCC_delta vs mean shift (GRNFormer §4.2);
- `evaluate_attention`: TF enrichment ratio rho with a permutation null (GRNFormer §4.6).

The `*_scores` functions are the same evaluations on precomputed feature arrays.

Controls (`grn_jax.tasks.controls`): annotation, edge prediction and the probe carry a
`random_init` row (the checkpoint's architecture and seed at initialisation; annotation
also `majority` and `chance`), score only cells the run never trained on, and refuse
graphs chosen by a cell's label (use one pooled network or kNN graph integration).
"""

from grn_jax.tasks.annotation import annotation_scores, evaluate_annotation
from grn_jax.tasks.attention import evaluate_attention, gene_importance
from grn_jax.tasks.edge_prediction import edge_scores, evaluate_edge_prediction, masked_cells
from grn_jax.tasks.perturbation import (evaluate_perturbation_response, evaluate_reverse_perturbation,
                                        response_scores, reverse_scores)
from grn_jax.tasks.probe import evaluate_probe, probe_scores
from grn_jax.tasks.results import TaskResult

TASKS = {
    "annotation": evaluate_annotation,
    "edge_prediction": evaluate_edge_prediction,
    "probe": evaluate_probe,
    "reverse_perturbation": evaluate_reverse_perturbation,
    "perturbation_response": evaluate_perturbation_response,
    "attention": evaluate_attention,
}

__all__ = [
    "TASKS", "TaskResult", "annotation_scores", "edge_scores", "evaluate_annotation", "evaluate_attention",
    "evaluate_edge_prediction", "evaluate_perturbation_response", "evaluate_probe", "evaluate_reverse_perturbation",
    "gene_importance", "masked_cells", "probe_scores", "response_scores", "reverse_scores",
]
