"""Toy models of superposition (Elhage et al. 2022): the batched model, its measures, the paper's figures, and SAEs
trained on its hidden layer. `reproduce(out)` runs it all; `glasswork toy` is its command."""
from .measures import FRACTIONS, PHASES, fraction_clustering, geometry_2d, phase_2_1, plateau
from .model import (ToyConfig, ToyModel, decaying_importance, dims_per_feature, feature_dimensionality, gradients,
                    sample, train)
from .paper import PARTS, ReproduceSettings, reproduce
from .sae import SAESettings, best_match_cosine, sae_recovery
