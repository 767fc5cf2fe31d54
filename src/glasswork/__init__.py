"""Glasswork: open a language model up. `import glasswork as gw`."""
__version__ = "0.1.0"

from .hooks import add, capture, hook_points, hooks, intervene, replace
from .io import GlassworkError, home
from .models import DEFAULT_MODEL, Model, load_model
from .dictionaries import DictionaryConfig, SparseCoder, CrossLayerTranscoder
from .dictionaries import load as load_dictionary, save as save_dictionary, load_set, save_set, load_transcoders
from . import directions, steering
from .steering import Intervention, add_direction, clamp_feature, project_out, steer, zero_feature
from .directions import (Direction, analogy, directional_ablation, feature_direction, load_direction, mean_difference,
                         orthogonalize, train_probe)
from . import features
from .features import FeatureIndex, build_index, fires, label_features
from . import circuits
from .circuits import Edit, Graph, ReplacementModel, attribute, intervene_logits, load_graph, supernode
from .training import TrainConfig, train
from .evals import evaluate
from .dictionaries.formats import export_saelens, import_saelens, export_circuit_tracer
from . import data
from .data import ActivationStore, harvest, stream_activations
from .data import corpus
from .demo import demo
from . import toy
