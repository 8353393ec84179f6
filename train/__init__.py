"""The training core: data, discriminator, losses, loop, checkpoints, DDP.

``train(TrainOptions(data="images/", out="runs/x", preset="tiny", steps=1000))`` or
``cips-deploy train images/ --out runs/x``. The EMA generator is always also written as
``out/generator.safetensors``, loadable with :func:`cips_deploy.load`.
"""

from cips_deploy.train.loop import Trainer, train
from cips_deploy.train.options import TrainOptions

__all__ = ["TrainOptions", "Trainer", "train"]
