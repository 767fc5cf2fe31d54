"""`python -m glasswork.cli VERB ...` (and `torchrun ... -m glasswork.cli train ...`)."""
from . import app

app()
