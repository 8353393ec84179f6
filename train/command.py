"""``cips-deploy train``: train a CIPS generator on a folder or zip of images.

Registered through ``register_commands``, the hook a third party's command uses. Every
numeric option takes the type :data:`~cips_deploy.train.options.NUMBERS` declares for its
field, so the command line and the Python API accept the same numbers.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from cips_deploy.contracts.command_options import ARCHITECTURE
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.train.options import NUMBERS


@click.command()
@click.argument("data", type=click.Path())  # text, not Path: Path("") would be the current folder
@click.option("--out", type=click.Path(), required=True, help="Run directory (checkpoints, log, samples); created if missing, in a folder that exists.")
@click.option("--preset", default="tiny", show_default=True, help="Generator preset: tiny, small, paper256, paper1024.")
@click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="skip, res, ne (CIPS) or creps.")
@click.option("--resolution", type=NUMBERS["resolution"], help="Training resolution, a power of two from 8 to 1024 (default: the preset's size).")
@click.option("--batch", type=NUMBERS["batch"], default=16, show_default=True, help="Total batch over all processes (at most 4096).")
@click.option("--steps", type=NUMBERS["steps"], default=1000, show_default=True, help="Generator steps to train to.")
@click.option("--seed", type=NUMBERS["seed"], default=0, show_default=True, help="Seed of the run (0 to 2**32 - 1).")
@click.option("--crop", type=NUMBERS["crop"], help="Patch-based training: the generator renders P x P patches only.")
@click.option("--topology", type=click.Choice(["flat", "cylinder"]), default="flat", show_default=True,
              help="cylinder: a 360-degree panorama model; every image is a window of it at a random angle.")
@click.option("--fov", type=NUMBERS["fov"], default=90.0, show_default=True, help="Cylinder: degrees of the panorama one view shows.")
@click.option("--lr", type=NUMBERS["lr"], default=0.002, show_default=True, help="Learning rate, above 0 and at most 1.")
@click.option("--r1-gamma", type=NUMBERS["r1_gamma"], default=10.0, show_default=True, help="R1 penalty weight (lazy, every 16 steps).")
@click.option("--pl-weight", type=NUMBERS["pl_weight"], default=0.0, show_default=True,
              help="Path-length regularisation weight, every 4 steps (the official CREPS config: 2; 0: off).")
@click.option("--ema-kimg", type=NUMBERS["ema_kimg"], default=10.0, show_default=True, help="Half-life of the generator EMA (thousands of images).")
@click.option("--checkpoint-every", type=NUMBERS["checkpoint_every"], default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--sample-every", type=NUMBERS["sample_every"], default=4000, show_default=True, help="Images between sample grids.")
@click.option("--fid-every", type=NUMBERS["fid_every"], default=0, show_default=True, help="Steps between FID evaluations (0: never; needs torch-fidelity).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint left it; options not given are the run's own.")
@click.option("--force", is_flag=True, help="Start a new run in an --out that holds an earlier one, replacing the files a training writes (and only those).")
def train(data: str, out: str, resume: bool, force: bool, **options) -> None:
    """Train a generator on DATA (a folder or a zip of images).

    Writes OUT/training-state.pt (resumable), OUT/generator.safetensors (the EMA
    generator), OUT/log.jsonl and OUT/samples/*.png. Scale out with
    `torchrun --nproc_per_node N --no-python cips-deploy train ...`.
    """
    from cips_deploy.train import TrainOptions, train as run_training

    context = click.get_current_context()
    given = {name for name in options if context.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    path = run_training(TrainOptions(data=data, out=out, **options), resume=resume, force=force, given=given)
    click.echo(str(path))


@hookimpl
def register_commands(cli):
    cli.add_command(train)
