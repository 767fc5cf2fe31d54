"""Feature index: one-pass statistics, SQLite index, labels and scoring, terminal pages, Neuronpedia export."""
