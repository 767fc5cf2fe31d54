"""`glasswork VERB`: one subcommand per verb, each a thin face on the Python API; one module per verb group here
(common.py: what every verb shares). Nothing here imports torch at module level, so `glasswork --help` is quick;
each verb imports what it needs when it runs.

Every verb takes --json: it then prints exactly one JSON object on stdout (paths, counts, metrics, seconds)
and sends progress bars and human text to stderr."""
from __future__ import annotations

import typer

from . import circuits, data, features, model, toy, training, vision
from .common import JSON_OPT, emit, err, finite, run_verb

__all__ = ["app", "emit", "err", "finite", "run_verb", "JSON_OPT"]

app = typer.Typer(help="Glasswork: open a language model up.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Glasswork: open a language model up."""


app.command("info")(model.info)
app.command("steer")(model.steer)
app.command("direction")(model.direction)
app.add_typer(features.features_app, name="features")
app.command("fires")(features.fires_cmd)
app.command("attribute")(circuits.attribute_cmd)
app.command("intervene")(circuits.intervene_cmd)
app.command("global")(circuits.global_cmd)
app.command("train")(training.train_cmd)
app.command("eval")(training.eval_cmd)
app.command("export")(training.export_cmd)
app.command("import")(training.import_cmd)
app.command("harvest")(data.harvest_cmd)
app.add_typer(data.store_app, name="store")
app.add_typer(data.corpus_app, name="corpus")
app.command("toy")(toy.toy_cmd)
app.command("vision")(vision.vision_cmd)
app.command("demo")(model.demo)
app.command("serve")(model.serve)
