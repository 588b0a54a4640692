"""Experiments: A/B tests with deterministic assignment and layers, bandits, analysis, OPE.

Public API (see the README section "Experiments")::

    hash_bucket(salt, unit, buckets=10_000) -> int                 # pure, deterministic, uniform
    weighted_choice(salt, unit, [(option, weight), ...]) -> str    # sticky weighted split
    assign(name, unit_id, context=None) -> Assignment(variant, propensity, ...)  # logs exposure

    ex = Experiments(project)
    ex.create(ExperimentSpec | dict | "exp.yaml"); ex.list(); ex.get(name); ex.stop(name)
    ex.update_traffic(name, weights={...}, traffic=0.5)   # moves the fewest units possible
    ex.assign(name, unit_id, context) ; ex.log_events([...]) ; ex.log_rewards(name, [...])
    ex.report(name).to_dict() ; ex.evaluate(name, "arm:B")   # replay / IPS / SNIPS / DR
    ex.history(name, metric=None, buckets=50).to_dict()     # p-values over time; bandit allocation

Errors: ``ExperimentError`` and its subclasses (``flywheel.experiments._errors``).
"""

from flywheel.experiments._analysis import Report
from flywheel.experiments._bandits import BanditState, PreparedPolicy
from flywheel.experiments._client import Assignment, ExperimentInfo, Experiments
from flywheel.experiments._default import (
    assign,
    close_default,
    default_experiments,
    log_events,
    log_reward,
)
from flywheel.experiments._definition import (
    BanditConfig,
    ExperimentSpec,
    ExperimentStatus,
    Metric,
    MetricKind,
    PolicyKind,
    Variant,
)
from flywheel.experiments._errors import (
    AnalysisError,
    ExperimentError,
    ExperimentExists,
    ExperimentNotFound,
    ExperimentStateError,
    InvalidExperiment,
)
from flywheel.experiments._hashing import hash64, hash_bucket, hash_unit_interval, weighted_choice
from flywheel.experiments._history import History
from flywheel.experiments._ope import Estimate, OffPolicyReport, off_policy_estimates
from flywheel.experiments._stats import (
    Comparison,
    always_valid_pvalues,
    cuped,
    msprt_from_sums,
    msprt_pvalue,
    proportion_ztest,
    srm_test,
    welch_ttest,
)
from flywheel.experiments._stream import ConsumeStats, EventStreamConsumer

__all__ = [
    "AnalysisError",
    "Assignment",
    "BanditConfig",
    "BanditState",
    "Comparison",
    "ConsumeStats",
    "Estimate",
    "EventStreamConsumer",
    "ExperimentError",
    "ExperimentExists",
    "ExperimentInfo",
    "ExperimentNotFound",
    "ExperimentSpec",
    "ExperimentStateError",
    "ExperimentStatus",
    "Experiments",
    "History",
    "InvalidExperiment",
    "Metric",
    "MetricKind",
    "OffPolicyReport",
    "PolicyKind",
    "PreparedPolicy",
    "Report",
    "Variant",
    "always_valid_pvalues",
    "assign",
    "close_default",
    "cuped",
    "default_experiments",
    "hash64",
    "hash_bucket",
    "hash_unit_interval",
    "log_events",
    "log_reward",
    "msprt_from_sums",
    "msprt_pvalue",
    "off_policy_estimates",
    "proportion_ztest",
    "srm_test",
    "weighted_choice",
    "welch_ttest",
]
