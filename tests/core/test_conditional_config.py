"""z_dim != w_dim and class-conditional configs, seeds and labels: the torch-free part."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.creps_spec import creps_config
from cips_deploy.runtime.seeds import seed_latent
from cips_deploy.runtime.styles import class_label

pytestmark = pytest.mark.runtime


def conditional(**fields) -> GeneratorConfig:
    return creps_config("tiny", **{"z_dim": 32, "c_dim": 3, **fields})


def test_latent_dim_is_z_dim_or_the_style_width():
    assert creps_config("tiny").latent_dim == 64 and creps_config("tiny").z_dim is None
    config = conditional()
    assert (config.latent_dim, config.style_dim, config.c_dim, config.conditional) == (32, 64, 3, True)
    # z as wide as w is spelt one way, so that equal models compare equal.
    assert creps_config("tiny", z_dim=64) == creps_config("tiny")


def test_json_of_unconditional_configs_is_unchanged_and_old_configs_load():
    plain = creps_config("tiny").to_dict()
    assert "z_dim" not in plain and "c_dim" not in plain  # hashes of existing models stay what they were
    assert GeneratorConfig.from_dict(json.loads(json.dumps(plain))) == creps_config("tiny")
    data = conditional().to_dict()
    assert (data["z_dim"], data["c_dim"]) == (32, 3)
    assert GeneratorConfig.from_dict(json.loads(json.dumps(data))) == conditional()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"c_dim": -1}, "c_dim must be a whole number from 0 to 65,536, not -1"),
        ({"c_dim": 1.5}, "c_dim must be a whole number"),
        ({"c_dim": True}, "c_dim must be a whole number"),
        ({"c_dim": 10**9}, "c_dim must be a whole number"),
        ({"z_dim": 0}, "z_dim must be a whole number from 1 to 65,536 or null, not 0"),
        ({"z_dim": "32"}, "z_dim must be a whole number"),
        ({"z_dim": float("nan")}, "z_dim must be a whole number"),
    ],
)
def test_bad_z_dim_and_c_dim_are_one_sentence(fields, message):
    with pytest.raises(CipsError, match=message) as refused:
        GeneratorConfig.from_dict({**creps_config("tiny").to_dict(), **fields})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("fields, message", [({"z_dim": 32}, "takes z as wide as w"), ({"c_dim": 3}, "unconditional")])
def test_cips_refuses_what_its_official_code_does_not_have(fields, message):
    with pytest.raises(CipsError, match=message):
        GeneratorConfig(arch="skip", size=16, hidden=16, style_dim=64, n_mlp=2, widths=(16, 16, 16), **fields)


def test_seeds_draw_z_with_the_latent_width():
    z = seed_latent(3, conditional())
    assert z.shape == (1, 32) and z.dtype == np.float32
    np.testing.assert_array_equal(z, np.random.RandomState(3).randn(1, 32).astype(np.float32))


def test_class_label_is_gen_images_one_hot():
    label = class_label(conditional(), 2)
    assert label.dtype == np.float32 and label.tolist() == [[0.0, 0.0, 1.0]]
    assert class_label(conditional(), np.int64(0)).tolist() == [[1.0, 0.0, 0.0]]
    assert class_label(creps_config("tiny"), None) is None


@pytest.mark.parametrize(
    "config, index, message",
    [
        (conditional(), None, r"class-conditional \(3 classes\): give --class N"),
        (conditional(), 3, "from 0 to 2 for this model, not 3"),
        (conditional(), -1, "from 0 to 2"),
        (conditional(), 1.0, "from 0 to 2"),
        (conditional(), True, "from 0 to 2"),
        (creps_config("tiny"), 0, "unconditional: it takes no class"),
    ],
)
def test_class_label_refusals_are_one_sentence(config, index, message):
    with pytest.raises(CipsError, match=message) as refused:
        class_label(config, index)
    assert "\n" not in str(refused.value)
