"""``cips-deploy train``: train a CIPS generator on a folder or zip of images.

Registered through ``register_commands``, the hook a third party's command uses.
"""

from __future__ import annotations

from pathlib import Path

import click

from cips_deploy.contracts.command_options import ARCHITECTURE
from cips_deploy.contracts.hookspecs import hookimpl


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory (checkpoints, log, samples).")
@click.option("--preset", default="tiny", show_default=True, help="Generator preset: tiny, small, paper256, paper1024.")
@click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="skip, res, ne (CIPS) or creps.")
@click.option("--resolution", type=int, help="Training resolution (default: the preset's size).")
@click.option("--batch", type=int, default=16, show_default=True, help="Total batch over all processes.")
@click.option("--steps", type=int, default=1000, show_default=True, help="Generator steps to train to.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--crop", type=int, help="Patch-based training: the generator renders P x P patches only.")
@click.option("--topology", type=click.Choice(["flat", "cylinder"]), default="flat", show_default=True,
              help="cylinder: a 360-degree panorama model; every image is a window of it at a random angle.")
@click.option("--fov", type=float, default=90.0, show_default=True, help="Cylinder: degrees of the panorama one view shows.")
@click.option("--lr", type=float, default=0.002, show_default=True)
@click.option("--r1-gamma", type=float, default=10.0, show_default=True, help="R1 penalty weight (lazy, every 16 steps).")
@click.option("--pl-weight", type=float, default=0.0, show_default=True,
              help="Path-length regularisation weight, every 4 steps (the official CREPS config: 2; 0: off).")
@click.option("--ema-kimg", type=float, default=10.0, show_default=True, help="Half-life of the generator EMA (thousands of images).")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--sample-every", type=int, default=4000, show_default=True, help="Images between sample grids.")
@click.option("--fid-every", type=int, default=0, show_default=True, help="Steps between FID evaluations (0: never; needs torch-fidelity).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint left it.")
def train(data: Path, out: Path, resume: bool, **options) -> None:
    """Train a generator on DATA (a folder or a zip of images).

    Writes OUT/training-state.pt (resumable), OUT/generator.safetensors (the EMA
    generator), OUT/log.jsonl and OUT/samples/*.png. Scale out with
    `torchrun --nproc_per_node N --no-python cips-deploy train ...`.
    """
    from cips_deploy.train import TrainOptions, train as run_training

    path = run_training(TrainOptions(data=str(data), out=str(out), **options), resume=resume)
    click.echo(str(path))


@hookimpl
def register_commands(cli):
    cli.add_command(train)
