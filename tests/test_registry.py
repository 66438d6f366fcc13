"""The sampler registry: every option declared once with its kind, twins derived from the kinds, options a
sampler cannot use refused in one line; the noise range in one place; the shipped sampler configs."""

import re

import pytest
import yaml

import sciencegen
from sciencegen.config import config_dir
from sciencegen.diffusion import SIGMA_MAX, SIGMA_MIN, make_grid
from sciencegen.samplers import SAMPLERS, check_sampler, resolve, twin
from sciencegen.samplers.registry import COMMON, KINDS, OPTIONS, PICARD, WALKS


def test_every_option_is_declared_once_with_a_kind():
    for key, opt in OPTIONS.items():
        assert opt.kind in KINDS and set(opt.walks) <= set(WALKS) and opt.walks, key
        assert opt.help and "\n" not in opt.help, key
    assert set(COMMON) | set(PICARD) == set(OPTIONS) and not set(COMMON) & set(PICARD)
    assert OPTIONS["lag"].kind == "table" and OPTIONS["lag"].walks == ("picard",)
    assert all(OPTIONS[k].methods == ("heun",) for k in ("churn", "churn_min", "churn_max", "churn_noise"))
    assert OPTIONS["max_batch"].kind == "engine"


def test_named_samplers_use_declared_options_of_their_walk():
    for name, spec in SAMPLERS.items():
        assert spec["kind"] in WALKS, name
        for key in set(spec) - {"kind"}:
            assert key in OPTIONS and spec["kind"] in OPTIONS[key].walks, (name, key)
        cfg = resolve(name, {})
        assert set(cfg) == {k for k, o in OPTIONS.items() if spec["kind"] in o.walks} | {"kind"}


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s["kind"] == "picard"))
def test_twin_walks_the_same_table_and_takes_no_engine_or_picard_option(name):
    seq, opts = twin(name, {"max_batch": 3, "tol": 0.2, "blocks": 3, "corrector_steps": 1})
    assert SAMPLERS[seq]["kind"] == "sequential"
    assert "max_batch" not in opts and "tol" not in opts
    assert opts["blocks"] == 3 and opts["corrector_steps"] == 1
    cfg, base = resolve(name, {}), resolve(seq, opts)
    for key, opt in OPTIONS.items():
        if opt.kind == "table" and "sequential" in opt.walks and key != "order":
            assert cfg[key] == base[key], (name, key)


def test_twins_of_the_named_samplers():
    assert twin("picard_sde") == ("sequential_sde", {"blocks": 4})
    assert twin("piadm_ode") == ("sequential_ode", {"form": "score", "blocks": 4, "corrector_steps": 1})
    assert twin("picard_heun", {"churn": 5.0}) == ("heun", {"churn": 5.0})
    assert twin("picard_dpm2m", {"sigma_max": 40.0, "window": 4}) == ("dpm2m", {"sigma_max": 40.0})
    assert twin("paradigms", {"grid": "karras"}) == ("sequential_sde", {"grid": "karras"})


@pytest.mark.parametrize("name, options, match", [
    ("sequential_sde", {"tol": 0.05}, r"unknown option\(s\) \['tol'\] for sampler 'sequential_sde': sequential "
                                      r"samplers take no tol \(only picard samplers do\)"),
    ("heun", {"lag": "step", "window": 4}, r"unknown option\(s\) \['lag', 'window'\] for sampler 'heun'"),
    ("picard_sde", {"churn": 5.0}, r"option\(s\) \['churn'\] of sampler 'picard_sde' apply to method heun only, "
                                   r"not method='sde'"),
    ("dpm2m", {"churn_noise": 1.01, "churn_min": 0.1}, r"\['churn_min', 'churn_noise'\] .* method heun only"),
    ("sequential_ode", {"tolerance": 1e-3}, r"unknown option\(s\) \['tolerance'\] for sampler 'sequential_ode'; "
                                           r"valid: "),
])
def test_an_option_the_sampler_cannot_use_is_refused_in_one_line(name, options, match):
    for call in (lambda: resolve(name, options), lambda: check_sampler(name, 8, **options),
                 lambda: sciencegen.sample(lambda x, s: x, (4,), sampler=name, steps=4, **options)):
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_heun_options_at_their_defaults_and_under_heun_are_taken():
    assert resolve("picard_sde", {"churn": 0.0, "churn_max": float("inf")})["churn"] == 0.0
    assert resolve("picard_sde", {"method": "heun", "churn": 5.0})["churn"] == 5.0
    assert check_sampler("heun", 8, churn=5.0, churn_min=0.1)["churn_min"] == 0.1


def test_the_noise_range_is_defined_once():
    vp = yaml.safe_load(config_dir().joinpath("sde", "vp.yaml").read_text())
    assert (vp["sigma_min"], vp["sigma_max"]) == (SIGMA_MIN, SIGMA_MAX)
    assert (COMMON["sigma_min"], COMMON["sigma_max"]) == (SIGMA_MIN, SIGMA_MAX)
    assert all((resolve(n, {})["sigma_min"], resolve(n, {})["sigma_max"]) == (SIGMA_MIN, SIGMA_MAX)
               for n in SAMPLERS)
    import torch

    assert torch.equal(make_grid(10), make_grid(10, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX))


def test_the_shipped_sampler_configs_recommend_options_they_take():
    for path in sorted(config_dir().joinpath("sampler").glob("*.yaml")):
        text = path.read_text()
        cfg = yaml.safe_load(text)
        assert cfg["name"] == path.stem and cfg["name"] in SAMPLERS
        examples = re.findall(r"sampler\.(\w+)=([\w.+-]+?)\.?(?:\s|$)", text)
        assert examples, path.name
        for key, value in examples:
            check_sampler(cfg["name"], int(cfg["steps"]), **{key: yaml.safe_load(value)})
