"""Property test of the pruner: random pruning plans on random CNNs must pass the oracle.

``check_random_plans`` (onnxprune.api) applies random plans to the model and checks
that the pruned model equals the original with the removed channels' consumer weights
zeroed; it raises on an oracle failure. A failing example prints as
``model=random_cnn(seed=..., max_nodes=...), plan_seed=...``: rebuild it with
``tests/fuzzgraphs.random_cnn``.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.models.fuzzgraphs import graphs, random_cnn

PLAN_SEEDS = st.integers(0, 2**31 - 1)
COMMON = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def check_random_plans(model, seed, n_plans=2):
    # Imported here so that a missing API fails these tests, not the whole collection.
    from onnxprune.api import check_random_plans as check

    return check(model, seed, n_plans)


@settings(max_examples=200, **COMMON)
@given(model=graphs(), plan_seed=PLAN_SEEDS)
def test_random_plans_pass_oracle(model, plan_seed):
    applied = check_random_plans(model, plan_seed)
    assert applied >= 0


@pytest.mark.slow
@settings(max_examples=3000, **COMMON)
@given(model=graphs(), plan_seed=PLAN_SEEDS)
def test_random_plans_pass_oracle_slow(model, plan_seed):
    applied = check_random_plans(model, plan_seed)
    assert applied >= 0


def test_some_plans_are_applied():
    """Guards against a vacuous fuzz run where every plan is rejected or skipped."""
    total = sum(check_random_plans(random_cnn(seed), seed) for seed in range(20))
    assert total > 0
