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
"""

from grn_jax.tasks.annotation import annotation_scores, evaluate_annotation
from grn_jax.tasks.probe import evaluate_probe, probe_scores
from grn_jax.tasks.results import TaskResult

__all__ = ["TaskResult", "annotation_scores", "evaluate_annotation", "evaluate_probe", "probe_scores"]
