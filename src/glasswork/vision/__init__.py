"""Vision: image networks with named hook points, the classic results of vision interpretability, sparse
dictionaries on image activations, their pages and steering an image model by a feature.

  models      ImageModel, capture / intervene, from_module, load_hf_vision
  keras_h5    the default image model: a pretrained Keras CIFAR-10 CNN converted into PyTorch (load_cifar_cnn)
  images      a labelled corpus of patches from the images scikit-image and scikit-learn ship
  classic     first-layer filters, orientation / curve tuning, the polysemanticity scores, receptive fields
  featurevis  feature visualization by optimization (visualize)
  dictionary  a TopK SAE on a layer's positions; clamping a feature
  index       the SQLite feature index behind the /vision page
  figures     the PNG figures
  run         `glasswork vision`: every stage, cached"""
from .classic import classify_filters, source_entropy, tuning, unit_maxima, weighted_source_entropy
from .dictionary import clamped_probs, load_image_sae, position_rows, train_image_sae
from .images import patches
from .keras_h5 import load_cifar_cnn
from .models import ImageModel, capture, from_module, intervene, load_hf_vision
from .run import VisionConfig, run_vision
from .featurevis import visualize

__all__ = ["ImageModel", "VisionConfig", "capture", "clamped_probs", "classify_filters", "from_module", "intervene",
           "load_cifar_cnn", "load_hf_vision", "load_image_sae", "patches", "position_rows", "run_vision",
           "source_entropy", "train_image_sae", "tuning", "unit_maxima", "visualize", "weighted_source_entropy"]
