"""Reproduce the paper's tissue-vs-background row on synthetic slides, next to the reference.

Trains GigaUNet-4492 on synthetic training slides, predicts separate held-out slides (other
seeds) with `gigamlx predict`'s library, scores them with the Dice evaluation (and the Otsu
baseline) and prints: held-out Dice mean ± std, s/step, peak memory.

Usage: python scripts/reproduce_paper.py [--quick] [--work DIR] [--json FILE] [--steps N]
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gigamlx.core.config import TrainConfig
from gigamlx.core.memory import peak_rss_bytes
from gigamlx.eval.report import Report, run_evaluation
from gigamlx.infer.predict import open_source, output_paths, predict_slide
from gigamlx.synth.render import synth_slide
from gigamlx.train.loop import StepMetrics, train
from gigamlx.train.run import start_run

log = logging.getLogger(__name__)

REFERENCE = {
    "setup": "paper: TF/Keras, M1 Ultra 128 GB, 16000x64000 regions, 4940 steps",
    "dice_mean": 0.989,
    "dice_std": 0.005,
    "seconds_per_step": 81.0,
    "peak_memory": ">100 GB",
}
TRAIN_SEED0, HELDOUT_SEED0 = 1000, 2000  # disjoint seeds: held-out slides are never seen


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of one reproduction. Sizes are (H, W) in pixels."""

    train_hw: tuple[int, int]
    n_train: int
    heldout_hw: tuple[int, int]
    n_heldout: int
    region: str
    steps: int
    lr: float
    loss: str = "dice+bce"
    memory_budget: str = "2GB"
    seed: int = 0


# --quick: many small regions rather than few large ones: Adam moves a weight about lr per
# step, so a CPU-minutes run needs steps more than pixels (300 steps of 512x512 at lr 1e-2).
QUICK = Plan((2048, 4096), 3, (2048, 2048), 3, "1024x1024", steps=400, lr=1e-2)
# default: the same recipe at 4x the region area; hours on a CPU, minutes on a GPU.
FULL = Plan((4096, 16384), 4, (4096, 8192), 5, "4096x4096", steps=1000, lr=3e-3)


def make_slides(work: Path, plan: Plan) -> tuple[list[Path], list[Path]]:
    """Synthetic training and held-out slide stores under `work` (reused when present)."""
    groups = (("train", plan.train_hw, plan.n_train, TRAIN_SEED0),)
    groups += (("heldout", plan.heldout_hw, plan.n_heldout, HELDOUT_SEED0),)
    paths: dict[str, list[Path]] = {}
    for kind, size_hw, count, seed0 in groups:
        paths[kind] = []
        for n in range(count):
            path = work / "slides" / f"{kind}-{n}-s{seed0 + n}-{size_hw[0]}x{size_hw[1]}.zarr"
            if not path.exists():
                synth_slide(path, size_hw, seed0 + n)
            paths[kind].append(path)
    return paths["train"], paths["heldout"]


def train_model(work: Path, plan: Plan, train_paths: list[Path], console: Console):
    """Train a fresh run in work/run; returns (run, per-step metrics)."""
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(
        data=tuple(str(p) for p in train_paths),
        region=plan.region,
        steps=plan.steps,
        memory_budget=plan.memory_budget,
        loss=plan.loss,
        lr=plan.lr,
        seed=plan.seed,
        out=str(run_dir),
        checkpoint_every=plan.steps,
    )
    run = start_run(config, resume=False)
    every = max(1, plan.steps // 10)

    def on_step(m: StepMetrics) -> None:
        if m.step % every == 0 or m.step == plan.steps:
            line = f"step {m.step:4d}  loss {m.loss:.4f}  dice {m.dice:.4f}  {m.seconds:.2f} s"
            console.print(line)

    return run, train(run, on_step=on_step)


def predict_heldout(run, heldout: list[Path], out_dir: Path, budget_bytes: int) -> list[Path]:
    """Probability maps (OME-Zarr) of the held-out slides with the trained model."""
    shutil.rmtree(out_dir, ignore_errors=True)
    preds = []
    for path in heldout:
        source = open_source(path)
        outputs = output_paths(out_dir, source.name, tiff=False, overlay=False)
        predict_slide(run.backend, run.model, source, outputs, budget_bytes)
        preds.append(outputs.zarr)
    return preds


def summary_row(report: Report, history: list[StepMetrics], plan: Plan) -> dict:
    """Our paper-style row: held-out Dice of the model and of Otsu, s/step, peak memory."""
    model, otsu = report.summary()["dice"], report.baseline_summary()["dice"]
    steady = history[1:] or history  # the first step pays for warm-up
    return {
        "setup": f"gigamlx (this machine), {plan.region} regions, {plan.steps} steps",
        "dice_mean": model["mean"],
        "dice_std": model["std"],
        "otsu_dice_mean": otsu["mean"],
        "otsu_dice_std": otsu["std"],
        "seconds_per_step": sum(m.seconds for m in steady) / len(steady),
        "peak_engine_bytes": max(m.peak_engine_bytes for m in history),
        "peak_rss_bytes": peak_rss_bytes(),
        "n_heldout": len(report.slides),
    }


def _pm(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.3f} ± {'—' if std is None else f'{std:.3f}'}"


def paper_table(ours: dict) -> Table:
    """The reference row and ours, side by side."""
    table = Table(title="Tissue vs background, held-out slides")
    for name in ("setup", "Dice", "Otsu Dice", "s/step", "peak memory"):
        table.add_column(name, justify="left" if name == "setup" else "right")
    ref = REFERENCE
    table.add_row(
        ref["setup"], _pm(ref["dice_mean"], ref["dice_std"]), "—", "81", ref["peak_memory"]
    )
    memory = f"{ours['peak_engine_bytes'] / 1e9:.2f} GB (RSS {ours['peak_rss_bytes'] / 1e9:.2f})"
    table.add_row(
        ours["setup"],
        _pm(ours["dice_mean"], ours["dice_std"]),
        _pm(ours["otsu_dice_mean"], ours["otsu_dice_std"]),
        f"{ours['seconds_per_step']:.2f}",
        memory,
    )
    return table


def reproduce(work: Path, plan: Plan, json_path: Path | None, console: Console) -> dict:
    """The whole pipeline: slides, training, held-out prediction, evaluation, the table."""
    start = time.perf_counter()
    train_paths, heldout = make_slides(work, plan)
    console.print(f"{len(train_paths)} training and {len(heldout)} held-out slides in {work}")
    run, history = train_model(work, plan, train_paths, console)
    preds = predict_heldout(run, heldout, work / "predictions", run.config.budget_bytes)
    dice_json = json_path.with_suffix(".dice.json") if json_path is not None else None
    report = run_evaluation(preds, heldout, 0.5, dice_json, "otsu", 0, console)
    ours = summary_row(report, history, plan)
    console.print(paper_table(ours))
    result = {"reference": REFERENCE, "ours": ours, "plan": asdict(plan)}
    result["seconds_total"] = time.perf_counter() - start
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_path}")
    return result


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="CPU-friendly run of a few minutes")] = False,
    work: Annotated[Path, typer.Option(help="slides, run and predictions go here")] = Path(
        "runs/reproduce"
    ),
    json_path: Annotated[Path | None, typer.Option("--json", help="result JSON")] = None,
    steps: Annotated[int | None, typer.Option(help="override the plan's steps")] = None,
    lr: Annotated[float | None, typer.Option(help="override the plan's learning rate")] = None,
    loss: Annotated[str | None, typer.Option(help="override the plan's loss")] = None,
) -> None:
    """Train on synthetic slides, score held-out ones, print the paper-style row."""
    logging.basicConfig(level=logging.WARNING)
    plan = QUICK if quick else FULL
    overrides = {"steps": steps, "lr": lr, "loss": loss}
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    json_path = json_path or work / "reproduce.json"
    reproduce(work, plan, json_path, Console(width=120))  # the tables need ~110 columns


if __name__ == "__main__":
    sys.exit(app())
