"""The training loop: non-saturating GAN with lazy R1, generator EMA, checkpoints and DDP.

One step is a discriminator update (plus, every ``r1_interval`` steps, the R1 penalty on
reals) and a generator update, as in StyleGAN2. All randomness of a step comes from a seed
derived from (run seed, step, rank), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import io
import os
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cips_deploy import create
from cips_deploy.runtime.atomic import atomic_path, sweep_leftovers
from cips_deploy.errors import CipsError, Interrupted, first_line
from cips_deploy.contracts.command_options import output_location
from cips_deploy.contracts.footprint import BYTES_PER_FLOAT, activation_floats_per_point
from cips_deploy.contracts.limits import check_memory
from cips_deploy.families.generator import Generator
from cips_deploy.train.data import check_data_path, load_images
from cips_deploy.train.discriminator import Discriminator
from cips_deploy.train.distributed import Distributed, init_distributed
from cips_deploy.train.options import TrainOptions
from cips_deploy.train.run_files import (  # noqa: F401  (STATE_FILE, LOCK_FILE, RESUME_KEYS, append_log: still importable from here)
    GENERATOR_FILE, LOCK_FILE, LOG_FILE, RESUME_KEYS, STATE_FILE, append_log, check_log, check_run_folder, clear_earlier_run,
    iter_log, non_finite_part, read_training_state, whole_step,
)
from cips_deploy.train.samples import save_sample_grid
from cips_deploy.train.views import ViewSampler

W_AVG_BETA = 0.995  # how slowly the tracked average w follows the batch means
# Out of memory: torch.OutOfMemoryError (CUDA and others) is newer than torch.cuda's name for it.
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)


class SynthesisStep(nn.Module):
    """The generator as DDP sees it: z [B, S], coords [B, P*P, 2] -> (images [B, 3, P, P], w [B, S])."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        w = self.generator.mapping(z)
        rgb = self.generator.synthesize(coords, w, noise=True)
        side = math.isqrt(coords.shape[1])
        return rgb.transpose(1, 2).reshape(z.shape[0], 3, side, side), w


class Trainer:
    def __init__(self, options: TrainOptions) -> None:
        self.options = options
        self.dist: Distributed = init_distributed(options.device)
        if options.batch % self.dist.world_size:
            raise CipsError(f"--batch {options.batch} does not split evenly over {self.dist.world_size} processes.")
        self.local_batch = options.batch // self.dist.world_size
        self.out = Path(options.out)
        self.views = ViewSampler(options.resolution, options.crop, options.topology == "cylinder", options.span)
        device = self.dist.device
        generator = create(
            options.preset, arch=options.arch, coordinate_space=options.coordinate_space,
            seed=options.seed, size=options.resolution,
        )
        self._check_batch_memory(generator)  # before the data set and the optimizers take their memory
        self.data = load_images(options.data, options.resolution, keep_aspect=options.topology == "cylinder")
        self.generator = generator.to(device).train()
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed + 1)
            self.discriminator = Discriminator(self.views.patch, channel_max=max(self.generator.config.widths)).to(device)
        # Lazy regularization (StyleGAN2): the D optimizer's lr and betas absorb the interval.
        ratio = options.r1_interval / (options.r1_interval + 1)
        self.g_optim = torch.optim.Adam(self.generator.parameters(), lr=options.lr, betas=(0.0, 0.99))
        self.d_optim = torch.optim.Adam(self.discriminator.parameters(), lr=options.lr * ratio, betas=(0.0, 0.99**ratio))
        self.step = 0
        self.last_checkpoint: int | None = None  # the step of the newest checkpoint known to be finite and on disk
        self.pl_mean = torch.zeros([], device=device)  # running mean of path lengths (path-length regularisation)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self._g_ddp = self.dist.wrap(SynthesisStep(self.generator))
        self._d_ddp = self.dist.wrap(self.discriminator)

    def _check_batch_memory(self, generator: Generator) -> None:
        """Refuse a batch whose synthesis alone cannot fit: the inference peak per point (the
        renderer's measured figure) times every point of a step's views is a lower bound of
        what a training step holds, checked before anything of that size is allocated."""
        points = self.local_batch * self.views.patch**2
        needed = points * BYTES_PER_FLOAT * activation_floats_per_point(generator.config)
        what = f"A batch of {self.local_batch:,} views of {self.views.patch} x {self.views.patch} pixels"
        advice = "use a smaller --batch, --crop or --resolution"
        if self.dist.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.dist.device)
            if needed > free:
                raise CipsError(f"{what} needs at least {needed / 2**30:,.1f} GiB of GPU memory, more than the {free / 2**30:,.1f} GiB free; {advice}.")
        else:
            check_memory(needed, what, advice)

    # ---------------------------------------------------------------- one step

    def _seed(self, phase: int) -> torch.Generator:
        """Seeds the global RNG (for noise) and returns a generator for this step and phase."""
        seed = hash((self.options.seed, self.step, self.dist.rank, phase)) % (2**63)
        torch.manual_seed(seed)
        return torch.Generator().manual_seed(seed)

    def _batch(self, phase: int) -> tuple[Tensor, Tensor, Tensor]:
        rng = self._seed(phase)
        reals, coords = self.views.sample(self.data.images, self.local_batch, rng)
        z = torch.randn(self.local_batch, self.generator.config.style_dim, generator=rng)
        device = self.dist.device
        return reals.to(device), coords.to(device), z.to(device)

    def train_step(self) -> dict[str, float]:
        o, record = self.options, {}
        reals, coords, z = self._batch(phase=0)
        self.discriminator.requires_grad_(True)
        with torch.no_grad(), self.dist.autocast():
            fakes, _ = self._g_ddp(z, coords)
        with self.dist.autocast():
            d_loss = F.softplus(self._d_ddp(fakes.float())).mean() + F.softplus(-self._d_ddp(reals)).mean()
        self.d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()
        record["d_loss"] = d_loss.item()

        if self.step % o.r1_interval == 0 and o.r1_gamma > 0:
            reals = reals.detach().requires_grad_(True)
            logits = self._d_ddp(reals)
            (gradient,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
            r1 = gradient.pow(2).sum(dim=(1, 2, 3)).mean()
            self.d_optim.zero_grad(set_to_none=True)
            (r1 * (o.r1_gamma / 2 * o.r1_interval) + 0 * logits[0]).backward()
            self.d_optim.step()
            record["r1"] = r1.item()

        _, coords, z = self._batch(phase=1)
        self.discriminator.requires_grad_(False)
        with self.dist.autocast():
            fakes, w = self._g_ddp(z, coords)
            g_loss = F.softplus(-self.discriminator(fakes.float())).mean()  # D's own module: no DDP sync for D here
        self.g_optim.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optim.step()
        record["g_loss"] = g_loss.item()

        if o.pl_weight > 0 and self.step % o.pl_interval == 0:
            record["pl"] = self._path_length_step()

        with torch.no_grad():
            self.generator.w_avg.lerp_(self.dist.mean(w.detach().float().mean(dim=0)), 1 - W_AVG_BETA)
            self._update_ema()
        self.step += 1
        return record

    def _path_length_step(self) -> float:
        """Lazy path-length regularisation (StyleGAN2): keep |J_w^T y| near its running mean,
        y random image-space directions of unit variance per pixel. Our synthesis takes one w
        for every layer, so the Jacobian is the one of that shared w (the official code takes
        the mean over its per-layer ws). Half the batch, as the official pl_batch_shrink 2."""
        o = self.options
        _, coords, z = self._batch(phase=2)
        half = max(1, z.shape[0] // 2)
        images, w = self._g_ddp(z[:half], coords[:half])  # [b, 3, P, P], [b, S]
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
        (gradient,) = torch.autograd.grad((images * noise).sum(), w, create_graph=True)
        lengths = gradient.square().sum(dim=1).sqrt()  # [b]
        self.pl_mean = self.pl_mean.lerp(self.dist.mean(lengths.mean().detach()), 0.01)
        penalty = (lengths - self.pl_mean).square().mean()
        self.g_optim.zero_grad(set_to_none=True)
        (penalty * (o.pl_weight * o.pl_interval) + 0 * images[0, 0, 0, 0]).backward()
        self.g_optim.step()
        return penalty.item()

    def _update_ema(self) -> None:
        o = self.options
        images = self.step * o.batch
        half_life = o.ema_kimg * 1000
        if o.ema_rampup:
            half_life = min(half_life, images * o.ema_rampup)
        beta = 0.5 ** (o.batch / max(half_life, 1e-8))
        for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            ema.copy_(live.detach().lerp(ema, beta))
        self.generator_ema.w_avg.copy_(self.generator.w_avg)

    # ------------------------------------------------------------- the run

    def run(self) -> None:
        """Train to ``options.steps``; SIGINT or SIGTERM finish the step, save and stop. The
        caller's signal handlers are back afterwards (a notebook's Ctrl-C keeps working)."""
        with self._stop_on_signals():
            self._run()

    def _run(self) -> None:
        o = self.options
        log_path = self.out / LOG_FILE
        if self.dist.is_main and self.data.skipped:
            click.echo(f"Skipped {len(self.data.skipped)} unreadable file(s), e.g. {self.data.skipped[0]}.", err=True)
        started, step_at_start = time.perf_counter(), self.step
        with click.progressbar(
            length=o.steps, label="training", file=sys.stderr if self.dist.is_main else io.StringIO(),
            show_pos=True, item_show_func=lambda text: text,
        ) as bar:
            bar.update(self.step)
            while self.step < o.steps:
                step_started = time.perf_counter()
                try:
                    record = self.train_step()
                except OUT_OF_MEMORY:
                    raise CipsError(
                        f"Training ran out of memory at step {self.step + 1}; {self._kept()} (use a smaller --batch, "
                        "--crop or --resolution)."
                    ) from None
                if not all(math.isfinite(value) for value in record.values()):
                    raise self._diverged("losses")
                elapsed = time.perf_counter() - step_started
                record = {"step": self.step, "images": self.step * o.batch, **record,
                          "images_per_second": o.batch / elapsed}
                if self.dist.is_main:
                    append_log(log_path, record)
                bar.update(1, f"D {record['d_loss']:.3f}  G {record['g_loss']:.3f}  {record['images_per_second']:.1f} img/s")
                if self.step % o.checkpoint_every == 0 or self.step == o.steps:
                    self.save()
                if (self.step * o.batch) // o.sample_every > ((self.step - 1) * o.batch) // o.sample_every:
                    self._write_samples()
                if o.fid_every and self.step % o.fid_every == 0:
                    self._log_fid(log_path)
                if self.dist.any(self.stop_requested):
                    self.save()
                    if self.dist.is_main:
                        click.echo(f"\nStopped at step {self.step}; saved. Continue with --resume.", err=True)
                    break
        if self.dist.is_main:
            rate = (self.step - step_at_start) * o.batch / max(time.perf_counter() - started, 1e-9)
            click.echo(f"Trained to step {self.step} ({rate:.1f} images/s); the generator is {self.out / GENERATOR_FILE}.", err=True)
        self.dist.close()

    def _kept(self) -> str:
        """What a stopped run leaves: the newest checkpoint known to be finite, if it is still there."""
        if self.last_checkpoint is not None and (self.out / STATE_FILE).is_file():
            return f"the last good checkpoint (step {self.last_checkpoint}) is in {self.out}"
        return "no checkpoint of this run was written before it"

    def _diverged(self, what: str) -> CipsError:
        return CipsError(
            f"The {what} became NaN or infinite at step {self.step}; training stopped and {self._kept()} "
            "(a smaller --lr or regularisation weight may help)."
        )

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        def request_stop(signum, frame):  # finish the step, save, then exit with 128 + signum
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------ persistence

    def save(self) -> None:
        """Write the state, the EMA generator and a log event, after checking that every weight
        and optimizer number is finite (every rank checks: replicas are identical, so all stop
        together): a checkpoint on disk is always one to go back to."""
        state = {
            "step": self.step,
            "options": json.dumps(self.options.to_dict()),
            "generator": self.generator.state_dict(),
            "generator_ema": self.generator_ema.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "g_optim": self.g_optim.state_dict(),
            "d_optim": self.d_optim.state_dict(),
            "pl_mean": self.pl_mean,
        }
        bad = non_finite_part(state, "The training state")
        if bad is not None:
            raise self._diverged(f"numbers in {bad!r}")
        fingerprints = self.dist.gather_fingerprint(self.generator, self.discriminator)
        if not self.dist.is_main:
            return
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"replicas diverged: parameter fingerprints {fingerprints}")
        state["fingerprints"] = fingerprints
        with atomic_path(self.out / STATE_FILE) as temporary:
            torch.save(state, temporary)
        self.generator_ema.provenance = {
            "source": "cips-deploy train",
            "data": self.data.source,
            "images": len(self.data),
            "step": self.step,
            "images_seen": self.step * self.options.batch,
            "options": self.options.to_dict(),
        }
        self.generator_ema.save(self.out / GENERATOR_FILE)
        self.last_checkpoint = self.step
        append_log(self.out / LOG_FILE, {"event": "checkpoint", "step": self.step, "replica_fingerprints": fingerprints})

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (:func:`~cips_deploy.train.run_files.read_training_state`,
        already checked for its keys, its options and finite numbers)."""
        path = self.out / STATE_FILE
        step = state["step"]
        if not 0 <= step <= self.options.steps:
            raise CipsError(f"Cannot resume from {path}: its step {step!r:.40} is not a whole number from 0 to --steps.")
        try:
            self.generator.load_state_dict(state["generator"])
            self.generator_ema.load_state_dict(state["generator_ema"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.g_optim.load_state_dict(state["g_optim"])
            self.d_optim.load_state_dict(state["d_optim"])
            pl_mean = state.get("pl_mean", torch.zeros([]))
            if not isinstance(pl_mean, Tensor) or pl_mean.numel() != 1:
                raise ValueError("pl_mean is not one number")
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
            first = first_line(error) or type(error).__name__
            raise CipsError(f"Cannot resume from {path}: its saved weights do not fit this run ({first[:200]}).") from None
        self.step = step
        self.last_checkpoint = step
        self.pl_mean = pl_mean.reshape([]).float().to(self.dist.device)
        self._truncate_log(self.out / LOG_FILE)

    def _truncate_log(self, path: Path) -> None:
        """Drop log lines of steps after the checkpoint (they will be run again), streamed
        from the old log into the new one; lines that are no record of ours go too."""
        if not self.dist.is_main or not os.path.lexists(path):
            return
        with atomic_path(path) as temporary, open(temporary, "w") as kept:
            for line, record in iter_log(path):
                step = whole_step(record) if "step" in record else 0
                if step is not None and step <= self.step:
                    kept.write(line + "\n")

    def _write_samples(self) -> None:
        if self.dist.is_main:
            save_sample_grid(self.generator_ema, self.views, self.out / "samples" / f"step-{self.step:07d}.png")

    def _log_fid(self, log_path: Path) -> None:
        from cips_deploy.train.fid import compute_fid

        if not self.dist.is_main:
            return
        fid, message = compute_fid(self.generator_ema, self.data, self.views)
        if message:
            click.echo(message, err=True)
        if fid is not None:
            append_log(log_path, {"event": "fid", "step": self.step, "fid": fid})


def train(options: TrainOptions, *, resume: bool = False, force: bool = False, given: Iterable[str] | None = None) -> Path:
    """Run (or, with ``resume``, continue) a training run; returns the generator's path.

    ``force``: start a new run in a folder that holds an earlier one, replacing the files a
    training writes (and only those). ``given``: with ``resume``, the options the caller
    named; the others are the saved run's (None: all were named, and all must match).
    """
    out = Path(options.out)
    output_location(out, "--out")  # its parent exists, it is writable, not in /proc or /sys
    if out.exists() and not out.is_dir():
        raise CipsError(f"--out {out} exists and is not a directory.")
    check_data_path(options.data)  # before --out is created: a refused run leaves nothing
    check_run_folder(out, resume=resume, force=force)
    created = not out.exists()
    try:
        out.mkdir(exist_ok=True)  # the run folder only: its parent must exist (output_location)
    except OSError as error:
        raise CipsError(f"Cannot write {out}: {error.strerror or error}.") from None
    lock = lock_run(out)  # two trainings into one folder would interleave log and state
    if lock is not None:  # what a killed run of this folder left half-written
        for name in (STATE_FILE, GENERATOR_FILE, LOG_FILE):
            sweep_leftovers(out, name)
    # Scatter-adds (the embedding grid's gradient) otherwise accumulate in thread order:
    # deterministic kernels make a resumed run repeat an uninterrupted one bit for bit.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    finished = False
    try:
        state = read_training_state(out / STATE_FILE) if resume else None  # under the lock: no run writes it now
        if state is not None:
            check_log(out / LOG_FILE)  # a log the resume cannot rewrite: refused before the data is read
            options = options.resumed(state["options"], given)
        trainer = Trainer(options)
        if state is not None:
            trainer.resume(state)
            del state  # the weights are in the modules now
        elif force and trainer.dist.is_main:
            clear_earlier_run(out)  # the new run is ready to start: only now does the old one go
        trainer.run()
        finished = True
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if lock is not None:
            if not finished and created and [entry.name for entry in out.iterdir()] == [LOCK_FILE]:
                (out / LOCK_FILE).unlink()  # a run refused before its first step leaves no folder
                out.rmdir()
            lock.close()  # releases the lock
    if trainer.stop_signal is not None:  # saved; now say that the run did not finish
        raise Interrupted(128 + trainer.stop_signal)
    return out / GENERATOR_FILE


def lock_run(out: Path):
    """Hold an exclusive lock on ``out/.train.lock`` (main process only); refuse if another run holds it.

    flock locks die with their process, so a killed run never leaves a stale lock. The
    empty lock file stays in the run folder.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # DDP: the main process locks for the whole run
    try:
        handle = open(out / LOCK_FILE, "a")
    except OSError as error:
        raise CipsError(f"Cannot write into {out}: {error.strerror or error}.") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CipsError(f"Another training is running in {out}; wait for it to finish or choose another --out.") from None
    return handle


def read_log(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for every complete line of a log.jsonl (:func:`~cips_deploy.train.run_files.iter_log`:
    streamed with limits; torn, overlong and too deeply nested lines are skipped)."""
    return list(iter_log(path))


def run_summary(path: Path) -> list[dict[str, Any]]:
    """The per-step records of a run's log.jsonl."""
    return [record for _, record in iter_log(path) if "event" not in record]
