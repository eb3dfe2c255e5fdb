"""JojoSCL losses: one per module, and the objective that weighs them (objective.py); pure torch (no Ray)."""

from jojoscl_dist.losses.cluster import cluster_contrastive_loss
from jojoscl_dist.losses.instance import instance_contrastive_loss
from jojoscl_dist.losses.objective import LossTerms, jojoscl_objective, needs_assignment, needs_key_prior
from jojoscl_dist.losses.sure import sure_loss

__all__ = ["instance_contrastive_loss", "cluster_contrastive_loss", "sure_loss", "jojoscl_objective", "LossTerms",
           "needs_assignment", "needs_key_prior"]
