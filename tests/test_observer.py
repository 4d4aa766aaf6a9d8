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


# --------------------------------------------------------------------------------------------------------------
# The arctan operator on a PDE state
# --------------------------------------------------------------------------------------------------------------
def _pde_state(n_ens: int = 3) -> tuple:
    pb = problems.get("kolmogorov", n=16)
    x = 2 * torch.randn(n_ens, *pb.state_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return pb, x


@pytest.mark.parametrize("noise_type", ["absolute", "relative"])
def test_arctan_likelihood_score_on_a_two_field_lattice_equals_autograd(noise_type):
    from methods.ensf import autograd_loglik_grad
    pb, x = _pde_state()
    obs = problems.bind_observer(pb, None, operator="arctan", stride=3, noise=0.1, noise_type=noise_type)
    y = obs.sample(x[:1], torch.Generator().manual_seed(1))[0]
    std = obs.noise_std(y)
    closed = obs.loglik_grad(x, y, std)
    auto = autograd_loglik_grad(obs, x, y, std)
    assert torch.allclose(closed, auto, rtol=1e-10, atol=1e-12)
    assert closed.shape == x.shape and torch.count_nonzero(closed[0]) == obs.n_obs


def test_arctan_observes_the_selected_values_through_atan_and_inverts_exactly_without_noise():
    pb, x = _pde_state()
    obs = problems.bind_observer(pb, None, operator="arctan", stride=4, noise=0.1, noise_type="absolute")
    z = obs.select(x)
    assert torch.equal(obs.observe(x), torch.atan(z))
    lo, hi = torch.full((obs.n_obs,), -20.0, dtype=torch.float64), torch.full((obs.n_obs,), 20.0,
                                                                             dtype=torch.float64)
    assert torch.allclose(obs.invert(obs.observe(x), lo, hi), z, rtol=1e-12, atol=1e-12)
    # a noisy value beyond pi/2 (where tan flips sign) is clamped to the range, never wrapped around
    far = obs.invert(torch.full((1, obs.n_obs), 1.6, dtype=torch.float64), lo, hi)
    assert torch.allclose(far, hi)
    identity = problems.bind_observer(pb, None, stride=4, noise=0.1, noise_type="absolute")
    assert torch.equal(identity.observe(x), z)


# --------------------------------------------------------------------------------------------------------------
# Observations every k-th cycle
# --------------------------------------------------------------------------------------------------------------
def test_obs_every_sets_the_observed_cycles_and_is_checked_against_the_problem():
    pb = problems.get("lorenz96", dim=12, n_cycles=6)
    obs = problems.bind_observer(pb, None, obs_every=3, noise=1.0, noise_type="absolute")
    assert [t for t in range(1, 7) if obs.observes_at(t)] == [3, 6]
    assert obs.label == "obs[noise=1,noise_type=absolute,obs_every=3]"
    with pytest.raises(ConfigError, match=r"obs_every=0 must be an integer >= 1"):
        ObserverConfig(obs_every=0)
    with pytest.raises(ConfigError, match=r"obs_every=7 leaves no observed cycle.*valid: 1 \.\. 6"):
        problems.bind_observer(pb, None, obs_every=7)

