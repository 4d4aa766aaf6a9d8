"""Conformance suite over both registries: every method on every problem returns finite ensembles of the
right shape, dtype and device, or skips with a reason. Plugins join with ASSIMBENCH_PLUGINS=pkg.mod."""
import pytest

import methods
import problems
from bench import conformance

conformance.load_env_plugins()


def _available(registry):
    out = []
    for n in registry.names():
        try:
            registry.cls(n)
            out.append(n)
        except Exception:
            pass
    return out


METHODS = _available(methods)
PROBLEMS = _available(problems)


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("method_name", METHODS)
def test_method_on_problem(method_name, problem_name, cache_dir):
    reason = conformance.check(method_name, problem_name, cache_dir=cache_dir)
    if reason:
        pytest.skip(f"{method_name} on {problem_name}: {reason}")


@pytest.mark.parametrize("observer", [{"operator": "arctan"}, {"obs_every": 2}], ids=["arctan", "obs_every=2"])
@pytest.mark.parametrize("problem_name", ["shallow_water", "kolmogorov"])
@pytest.mark.parametrize("method_name", ["FreeRun", "EnKF", "EnSF", "EnFF", "LD-EnSF", "Latent-EnSF"])
def test_method_on_pde_with_a_nonlinear_operator_or_sparse_times(method_name, problem_name, observer, cache_dir):
    """Every method runs the PDE problems with arctan observations and with observations every other cycle
    (cycle 1 forecast-only, cycle 2 observed); the latent methods' networks are trained or chosen for that
    layout."""
    reason = conformance.check(method_name, problem_name, cache_dir=cache_dir, observer=observer)
    assert reason is None, reason


def test_registries_list_the_builtins():
    assert {"EnKF", "FreeRun"} <= set(METHODS)
    assert {"lorenz96", "linear_gauss"} <= set(PROBLEMS)


def test_a_plugin_method_joins_without_editing_the_registry(tmp_path, monkeypatch):
    """A researcher's own Method in their own module registers itself and passes conformance."""
    (tmp_path / "my_filter.py").write_text(
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "import methods\n"
        "from methods.base import Method, EnsembleState\n"
        "@dataclass\n"
        "class Nudging(Method):\n"
        "    '''Relax observed components toward the observation.'''\n"
        "    name: ClassVar[str] = 'Nudging'\n"
        "    weight: float = 0.5\n"
        "    def analysis(self, state, y):\n"
        "        x = state.x.reshape(state.x.shape[0], -1).clone()\n"
        "        idx = self.ctx.observer.index.to(x.device)\n"
        "        x[:, idx] += self.weight * (y - x[:, idx])\n"
        "        return EnsembleState(x.reshape(state.x.shape), state.params)\n"
        "methods.register(Nudging)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from assimbench.registry import load_plugins
    load_plugins(["my_filter"])
    assert "Nudging" in methods.names()
    assert methods.get("Nudging", weight=0.3).label == "Nudging[weight=0.3]"
    assert conformance.check("Nudging", "lorenz96") is None


def test_unknown_names_and_keys_list_the_valid_ones():
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError, match="valid: .*EnKF.*FreeRun"):
        methods.get("EnFK")
    with pytest.raises(ConfigError, match="did you mean 'lorenz96'"):
        problems.get("lorenz69")
    with pytest.raises(ConfigError, match="unknown key 'dimension'.*valid: .*dim"):
        problems.get("lorenz96", dimension=10)
    with pytest.raises(ConfigError, match="should be an integer"):
        problems.get("lorenz96", dim="forty")
