"""Circuit tracing: the replacement model, attribution graphs, pruning, scores and interventions."""
from .graph import Graph, load_graph
