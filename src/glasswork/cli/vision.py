"""`glasswork vision`: the vision set on the default image model, from nothing to figures and pages."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT, emit, err, run_verb


def vision_cmd(out: Optional[Path] = typer.Option(None, help="Folder for the stages, figures (img/) and the feature "
                                                          "index (vision/) (default: $GLASSWORK_HOME/vision-demo)."),
               hook: str = typer.Option("conv2d_3", help="The middle layer: tuning, top patches, the SAE."),
               d_sae: int = typer.Option(1024, min=1, help="SAE latents."),
               k: int = typer.Option(8, min=1, help="SAE active latents per position."),
               steer_class: str = typer.Option("automobile", help="The class the steering stage raises."),
               serve: bool = typer.Option(False, "--serve/--no-serve", help="Open the pages in the web app at the end."),
               port: int = typer.Option(8765, min=1, max=65535, help="Port for the web app."),
               fresh: bool = typer.Option(False, help="Delete the folder's stage records first and start over."),
               as_json: bool = JSON_OPT):
    """Vision: first-layer filters, orientation and curve tuning, polysemantic units, an SAE on a conv layer whose
    features are scored the same way, feature visualization, steering the classifier by a feature, and the feature
    pages. Stages are cached (a rerun resumes). About 2 minutes on 2 cores."""
    def go():
        import shutil

        from ..io import GlassworkError, check_out
        from ..vision.keras_h5 import CIFAR_CLASSES
        from ..vision.run import VisionConfig, run_vision, summary, vision_folder
        if steer_class not in CIFAR_CLASSES:
            raise GlassworkError(f"--steer-class '{steer_class}' is not a class of the default image model "
                                 f"({', '.join(CIFAR_CLASSES)})")
        t0 = time.time()
        folder = check_out(vision_folder(out), "folder")
        if fresh:
            for sub in ("stages", "sae", "vision"):
                shutil.rmtree(folder / sub, ignore_errors=True)
            (folder / "config.json").unlink(missing_ok=True)
        cfg = VisionConfig(hook=hook, d_sae=d_sae, k=k, steer_class=steer_class)
        results = run_vision(folder, cfg, log=lambda s: err.print(s, markup=False))
        res = {"out": str(folder), "figures": sorted(str(p) for p in (folder / "img").glob("*.png")),
               "index": results["index"]["path"], "stages": results, "seconds": round(time.time() - t0, 2)}
        emit(res, as_json, "\n".join(f"{name}: {summary(name, rec)}" for name, rec in results.items())
             + f"\n\nfigures in {folder / 'img'}; pages: glasswork serve --dir {folder} then /vision"
             + f" ({res['seconds']} s)")
        if serve:
            from ..server import serve as run_server
            err.print(f"\nweb app: [bold]http://127.0.0.1:{port}/vision[/]  (Ctrl-C stops it)")
            run_server(folder, port=port)
    run_verb(go)
