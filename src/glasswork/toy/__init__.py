"""Toy models of superposition (issue 8; in progress: see /work/notes/issue-8.md)."""
