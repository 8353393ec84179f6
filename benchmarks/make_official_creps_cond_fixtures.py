"""Make the official CREPS fixtures of tests/fixtures/official-creps-cond/ with the official code itself.

    python benchmarks/make_official_creps_cond_fixtures.py PATH/TO/CREPS [OUT_DIR]

PATH/TO/CREPS is an unmodified checkout of VinAIResearch/CREPS (commit ff09abc). Its code runs
here on the CPU as it is; none of it is copied into this project. The only help it gets is
environmental, as in ``/work/shared/fixtures/official-creps/README.md``: where ``pkg_resources``
(gone from setuptools >= 81) is missing, a stand-in module with ``parse_version`` is put into
``sys.modules`` before the official modules import it.

Two official generators are built exactly as ``training/training_loop.py`` builds them
(``dnnlib.util.construct_class_by_name`` with train.py's ``--cfg=creps`` kwargs, then
``G_ema = copy.deepcopy(G).eval()``), given trained-looking random weights (below), and
pickled as a training snapshot (``{G, D, G_ema, augment_pipe, training_set_kwargs}``, every
module ``deepcopy(...).eval().requires_grad_(False).cpu()``, ``pickle.dump``):

- ``creps_r16_z32_w64``: z_dim 32, w_dim 64, unconditional;
- ``creps_r16_cond3``: z_dim 32, w_dim 64, c_dim 3 (class-conditional: ``mapping.embed``).

Then the official forward computes the reference outputs (``*_ref.pt``): z from
``np.random.RandomState(seed).randn(1, z_dim)`` as gen_images.py draws it, one-hot labels as
gen_images.py builds them, ``G.synthesis.b4.input.coords = gen_images.make_coords(R, scale)``,
``G(z, c, truncation_psi=psi, noise_mode='const', force_fp32=True)`` and ``ws = G.mapping(z, c, psi)``.
Not run by the tests (they read its outputs); the fixture README says how it was run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch

MODELS = {
    "creps_r16_z32_w64": dict(z_dim=32, w_dim=64, c_dim=0),
    "creps_r16_cond3": dict(z_dim=32, w_dim=64, c_dim=3),
}
# train.py --cfg=creps --cbase=256 --cmax=32 --map-depth=2 (creps doubles cbase / cmax for G), 16 x 16 RGB.
COMMON = dict(channel_base=512, channel_max=64, img_resolution=16, img_channels=3)
SEEDS = (0, 1)


def official_modules(checkout: Path):
    """Import the official packages from ``checkout`` (environment help only; see the module docstring)."""
    sys.path.insert(0, str(checkout))
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81: only parse_version is used (torch version checks)
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    import dnnlib
    import gen_images

    return dnnlib, gen_images


def build(dnnlib, z_dim: int, w_dim: int, c_dim: int, seed: int):
    """G, G_ema and D as training_loop.py constructs them (CPU), with trained-looking weights."""
    torch.manual_seed(seed)
    G_kwargs = dnnlib.EasyDict(class_name="training.networks_creps.Generator", z_dim=z_dim, w_dim=w_dim,
                               mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                               channel_base=COMMON["channel_base"], channel_max=COMMON["channel_max"])
    D_kwargs = dnnlib.EasyDict(class_name="training.networks_stylegan2.Discriminator", block_kwargs=dnnlib.EasyDict(),
                               mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4),
                               channel_base=256, channel_max=32)
    common = dict(c_dim=c_dim, img_resolution=COMMON["img_resolution"], img_channels=COMMON["img_channels"])
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common).train().requires_grad_(False)
    trained_looking(G)
    G_ema = copy.deepcopy(G).eval()
    with torch.no_grad():  # w_avg: the mean of the mapping over random z and, for a conditional model, random classes
        z = torch.randn(1000, z_dim)
        c = torch.nn.functional.one_hot(torch.randint(c_dim, (1000,)), c_dim).float() if c_dim else None
        G_ema.mapping.w_avg.copy_(G_ema.mapping(z, c).mean(dim=(0, 1)))
        G.mapping.w_avg.copy_(G_ema.mapping.w_avg)
        for name, tensor in G.named_parameters():  # G = G_ema + noise: a loader that picks G fails the refs
            tensor.add_(0.05 * tensor.abs().mean() * torch.randn_like(tensor))
    return G, G_ema, D


def trained_looking(G) -> None:
    """The shared fixtures' recipe: non-zero biases, ToRes and output weights scaled so |rgb| ~ 1-3;
    the label embedding gets a bias and keeps its random weight, so every class maps elsewhere."""
    with torch.no_grad():
        for name, tensor in G.named_parameters():
            if name.endswith(".bias"):
                if name.startswith("mapping.fc"):
                    tensor.copy_(10 * torch.randn_like(tensor))  # x 0.01 bias gain: about 0.1
                elif name.endswith("affine.bias"):
                    tensor.copy_(1 + 0.2 * torch.randn_like(tensor))
                else:
                    tensor.copy_(0.2 * torch.randn_like(tensor))
            if ".tores." in name and (name.endswith(".weight") or not name.startswith("synthesis.block")):
                tensor.mul_(0.3)
            if name.startswith("synthesis.decoder_img.") or (name.startswith("synthesis.block") and ".tores.weight" in name):
                tensor.mul_(0.4)


def snapshot(G, D, G_ema, c_dim: int) -> dict:
    """The snapshot dict exactly as training_loop.py writes it (augment_pipe None: --aug=noaug)."""
    training_set_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="~/datasets/toy-16x16.zip",
                               use_labels=bool(c_dim), max_size=None, xflip=False, resolution=16, random_seed=0)
    data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=dict(training_set_kwargs))
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    return data


def one_hot(classes, c_dim: int) -> torch.Tensor:
    """gen_images.py's label: zeros [B, C] with a 1 at each class."""
    label = torch.zeros([len(classes), c_dim])
    for row, index in enumerate(classes):
        label[row, index] = 1
    return label


def references(G, gen_images, c_dim: int) -> dict:
    """Official outputs: cases name -> dict of z, c, truncation_psi, scale, coords, ws, rgb."""
    z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G.z_dim) for s in SEEDS])).float()
    if c_dim:
        cases = {"class0_psi1": ((0, 0), 1.0, 1.0), "class1_psi1": ((1, 1), 1.0, 1.0),
                 "class2_psi0.7": ((2, 2), 0.7, 1.0), "classes01_scale1.5_psi0.7": ((0, 1), 0.7, 1.5)}
    else:
        cases = {"scale1_psi1": (None, 1.0, 1.0), "scale1_psi0.7": (None, 0.7, 1.0), "scale1.5_psi0.7": (None, 0.7, 1.5)}
    out = {}
    for name, (classes, psi, scale) in cases.items():
        c = one_hot(classes, c_dim) if c_dim else torch.zeros([2, 0])
        G.synthesis.b4.input.coords = gen_images.make_coords(G.img_resolution, scale)
        with torch.no_grad():
            rgb = G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)
            ws = G.mapping(z, c, truncation_psi=psi)
            assert torch.equal(rgb, G.synthesis(ws, force_fp32=True))
        case = dict(z=z.clone(), seeds=list(SEEDS), truncation_psi=psi, scale=scale, force_fp32=True,
                    coords=G.synthesis.b4.input.coords.clone(), ws=ws, rgb=rgb)
        if c_dim:
            case.update(c=c, classes=list(classes))
        out[f"{name}_fp32"] = case
    G.synthesis.b4.input.coords = gen_images.make_coords(G.img_resolution, 1.0)
    return out


def main(checkout: Path, out_dir: Path) -> None:
    dnnlib, gen_images = official_modules(checkout)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {"official_commit": "ff09abc", "torch": torch.__version__, "numpy": np.__version__, "files": {}}
    for seed, (name, dims) in enumerate(MODELS.items()):
        G, G_ema, D = build(dnnlib, seed=100 + seed, **dims)
        pkl = out_dir / f"{name}.pkl"
        with open(pkl, "wb") as f:
            pickle.dump(snapshot(G, D, G_ema, dims["c_dim"]), f)
        with open(pkl, "rb") as f:  # the refs come from the pickled G_ema, read back as the official loader does
            import legacy

            G_loaded = legacy.load_network_pkl(f)["G_ema"]
        refs = references(G_loaded, gen_images, dims["c_dim"])
        torch.save(refs, out_dir / f"{name}_ref.pt")
        facts["files"][f"{name}.pkl"] = {
            "sha256": hashlib.sha256(pkl.read_bytes()).hexdigest(),
            "G_ema_init_kwargs": json.loads(json.dumps(G_ema.init_kwargs, default=dict)),
            "num_parameters_G_ema": sum(p.numel() for p in G_ema.parameters()),
            "num_ws": G_ema.num_ws,
            "w_avg_norm": float(torch.linalg.norm(G_ema.mapping.w_avg)),
            "cases": {case: {"max_abs_rgb": float(v["rgb"].abs().max())} for case, v in refs.items()},
        }
    (out_dir / "fixtures.json").write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2])
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2] if len(sys.argv) == 3 else "tests/fixtures/official-creps-cond"))
