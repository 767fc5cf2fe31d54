"""Circuit tracing: the replacement model, attribution graphs, pruning, scores and interventions."""
from .graph import Graph, load_graph
from .replacement import ReplacementModel
from .attribution import attribute
from .interventions import Edit, feature_edits, generate, intervene_logits, supernode
