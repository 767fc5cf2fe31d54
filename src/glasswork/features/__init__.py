"""Feature index: one-pass statistics, SQLite index, labels and scoring, terminal pages, Neuronpedia export."""
from .explain import BuiltinExplainer, HFChat, LMExplainer, OpenAIChat, make_explainer
from .firing import fires
from .index import FeatureIndex, build_index, build_set_index, index_path, layer_index_path
from .neuronpedia import export as export_neuronpedia
from .scoring import KeywordScorer, LMScorer, SurprisalScorer, ensure_labels, label_features, score_label
from .stats import StatsConfig
