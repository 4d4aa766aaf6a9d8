"""The observer: a frozen configuration bound to a problem as an operator."""
import dataclasses

import pytest
import torch

import problems
from assimbench.errors import ConfigError
from problems.base import Observer, ObserverConfig


def test_one_configuration_binds_to_problems_of_different_size_and_stays_as_given():
    """The configuration is a plain frozen value: binding it computes the layout without changing it."""
    cfg = ObserverConfig(coverage=0.05, noise=0.2, noise_type="absolute")
    small = cfg.bind(problems.get("shallow_water", n=16))
    large = cfg.bind(problems.get("shallow_water", n=32))
    assert isinstance(small, Observer) and small.config is cfg and large.config is cfg
    assert small.n_obs < large.n_obs
    assert small.index.max() < 3 * 16 * 16 <= large.index.max()
    assert cfg == ObserverConfig(coverage=0.05, noise=0.2, noise_type="absolute") and hash(cfg) == hash(
        ObserverConfig(coverage=0.05, noise=0.2, noise_type="absolute"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.coverage = 0.5  # type: ignore[misc]
    assert small.label == cfg.label == "obs[coverage=0.05,noise=0.2,noise_type=absolute]"
    assert small.coverage == 0.05 and small.noise_type == "absolute" and small.operator == "identity"


def test_bind_observer_equals_binding_the_configuration():
    pb = problems.get("lorenz96", dim=12)
    a = problems.bind_observer(pb, None, coverage=0.5, layout="random", noise=1.0, noise_type="absolute")
    b = ObserverConfig(coverage=0.5, layout="random", noise=1.0, noise_type="absolute").bind(pb)
    assert torch.equal(a.index, b.index) and a.label == b.label
    assert torch.equal(a.noise_std(), b.noise_std())


def test_additive_noise_needs_the_training_std_and_uses_it_per_field():
    pb = problems.get("shallow_water", n=16)
    geometry_only = problems.bind_observer(pb, None, stride=4)
    with pytest.raises(ConfigError, match="bind the observer to a dataset"):
        geometry_only.noise_std()
    bound = ObserverConfig(stride=4, noise=0.1).bind(pb, field_std=(1.0, 2.0, 4.0))
    std = bound.noise_std().reshape(-1, 3)  # point-major, field-minor
    assert torch.allclose(std, torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64).expand_as(std))
