"""Score a model on the real slide (data/real/CMU-1-Small-Region.svs) against its reference.

The same path as the held-out synthetic slides of `reproduce_paper.py`: the slide is ingested
with the reference tissue region as its mask (`gigamlx ingest --mask`), predicted with
`gigamlx predict`'s library, and scored by the Dice evaluation: the raw map at the
checkpoint's chosen cut beside Otsu, the post-processed tissue mask beside the morphological
detector. The reference is drawn by `scripts/real_slide_reference.py` (docs/real-slide.md).

Usage: python scripts/real_slide_dice.py [RUN] [--work DIR] [--json FILE]  (no RUN: bundled)
       python scripts/real_slide_dice.py --mask MASK.png   (score a ready mask instead)
       python scripts/real_slide_dice.py --closing-um 8 --fill-holes-um2 1e6   (other settings)

The tissue mask is post-processed as the model records (its checkpoint, or the bundled model's
card); `--closing-um`, `--fill-holes-um2` and `--min-object-um2` replace single settings, as
`gigamlx predict` takes them: a diagnostic of what the settings do on a real slide. This slide
is a held-out check, so no default is ever chosen on it (docs/real-slide.md).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from real_slide_reference import REFERENCE, ROOT, SLIDE  # scripts/real_slide_reference.py

from gigamlx.eval.slides import evaluate_files, evaluate_slide
from gigamlx.runs.bundled import BUNDLED

WORK = ROOT / "runs" / "real-slide"


def missing() -> str | None:
    """Why the real slide cannot be scored here, or None when it can."""
    for path in (SLIDE, REFERENCE):
        if not path.is_file():
            return f"{path.relative_to(ROOT)} is missing (data/real/README.md says where from)"
    return None


def reference_store(work: Path) -> Path:
    """The slide ingested with the reference as its mask, in `work` (made again when the
    reference is newer): a slide store, the format the evaluation and baselines read."""
    from gigamlx.slide.ingest import ingest

    store = work / f"{SLIDE.stem}.zarr"
    if store.exists() and store.stat().st_mtime >= REFERENCE.stat().st_mtime:
        return store
    work.mkdir(parents=True, exist_ok=True)
    return ingest(SLIDE, store, mask=REFERENCE, overwrite=True)


def _metrics(counts, prefix: str) -> dict[str, float]:
    metrics = counts.metrics()
    return {f"{prefix}{name}": metrics[name] for name in ("dice", "precision", "recall")}


def score_prediction(pred: Path, store: Path) -> dict[str, Any]:
    """Dice, precision and recall of a `gigamlx predict` output against the reference:
    the raw map at its recorded cut (`dice`), its tissue mask (`dice_post`), and Otsu
    (`otsu_dice`) and the morphological detector (`morph_dice`) on the same pixels."""
    raw = evaluate_files([pred], [store], None, "otsu", raw=True).slides[0]
    post = evaluate_files([pred], [store], None, "morph").slides[0]
    masked = _metrics(post.counts, "post_")
    masked["dice_post"] = masked.pop("post_dice")
    return {
        "slide": SLIDE.name,
        "reference": str(REFERENCE.relative_to(ROOT)),
        "threshold": raw.threshold,
        **_metrics(raw.counts, ""),
        **masked,
        **_metrics(raw.baseline_counts, "otsu_"),
        **_metrics(post.baseline_counts, "morph_"),
    }


def score_mask(mask: Path, store: Path) -> dict[str, float]:
    """Dice, precision and recall of a ready mask image (1-bit, or 0/1 or 0/255 grey, on the
    slide's level-0 grid) against the reference in `store`."""
    return _metrics(evaluate_slide(mask, store, 0.5).counts, "")


def predict_and_score(
    checkpoint: Path,
    work: Path = WORK,
    memory_budget: str | None = None,
    postprocess: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Predict the real slide with `checkpoint` (a run folder, checkpoint folder or weights
    file, as `gigamlx predict` takes) into `work`, then `score_prediction`. `postprocess`
    replaces settings of the model's recorded post-processing (`PostprocessConfig` fields)."""
    from gigamlx.infer.model import postprocess_for, trained_scale
    from gigamlx.infer.predict import PredictOptions, predict_slides

    store = reference_store(work)
    options = PredictOptions(overlay=True, overwrite=True)
    if memory_budget is not None:
        options = options._replace(memory_budget=memory_budget)
    post = dataclasses.replace(postprocess_for(trained_scale(checkpoint)), **(postprocess or {}))
    options = options._replace(postprocess=post.validate())
    result = predict_slides(checkpoint, [store], work / "predictions", options)[0]
    return score_prediction(result.outputs.zarr, store) | {
        "checkpoint": str(checkpoint),
        "postprocess": dataclasses.asdict(post),
        "overlay": str(result.outputs.overlay),
    }


def default_checkpoint() -> Path:
    """The model scored when no RUN is given: the one that ships inside gigamlx."""
    return Path(BUNDLED)


def format_result(result: dict[str, Any]) -> str:
    """One line per detector: Dice, precision, recall."""
    first = "mask" if "mask" in result else "model, raw map"
    rows = [(first, ""), ("model, tissue mask", "post_")]
    rows += [("Otsu", "otsu_"), ("morph", "morph_")]
    lines = [f"{SLIDE.name} against {REFERENCE.name}:"]
    for name, prefix in rows:
        dice = "dice_post" if prefix == "post_" else f"{prefix}dice"
        if dice in result:
            values = f"dice {result[dice]:.4f}  precision {result[prefix + 'precision']:.4f}"
            lines.append(f"  {name:20s} {values}  recall {result[prefix + 'recall']:.4f}")
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    run: Annotated[
        Path | None,
        typer.Argument(help="run folder, checkpoint folder or .safetensors (default: bundled)"),
    ] = None,
    mask: Annotated[Path | None, typer.Option(help="score this mask PNG instead")] = None,
    work: Annotated[Path, typer.Option(help="the ingested slide and predictions")] = WORK,
    json_path: Annotated[Path | None, typer.Option("--json", help="result JSON")] = None,
    memory_budget: Annotated[str | None, typer.Option(help="predict's memory budget")] = None,
    closing_um: Annotated[
        float | None, typer.Option(help="closing radius, µm (default: the model's)")
    ] = None,
    fill_holes_um2: Annotated[
        float | None, typer.Option(help="hole-filling limit, µm² (default: the model's)")
    ] = None,
    min_object_um2: Annotated[
        float | None, typer.Option(help="smallest piece kept, µm² (default: the model's)")
    ] = None,
) -> None:
    """Dice of a model (or a mask) on the real slide, beside Otsu and morph."""
    reason = missing()
    if reason:
        raise SystemExit(reason)
    typed = {"closing_um": closing_um, "fill_holes_um2": fill_holes_um2}
    typed["min_object_um2"] = min_object_um2
    post = {name: value for name, value in typed.items() if value is not None}
    if mask is not None:
        if post:
            raise SystemExit("--mask is scored as it is: drop the post-processing options")
        result = score_mask(mask, reference_store(work)) | {"mask": str(mask)}
    else:
        checkpoint = run or default_checkpoint()
        try:
            result = predict_and_score(checkpoint, work, memory_budget, post)
        except ValueError as error:  # a negative setting, named by PostprocessConfig.validate
            raise SystemExit(f"real_slide_dice.py: {error}") from None
    print(format_result(result))
    if "postprocess" in result:
        settings = ", ".join(f"{k} {v:g}" for k, v in result["postprocess"].items())
        print(f"  (tissue mask post-processed with {settings})")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    sys.exit(app())
