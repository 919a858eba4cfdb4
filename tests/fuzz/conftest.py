"""Hypothesis profiles: a short run in the default suite, 10,000 cases per parser in `make fuzz`
(HYPOTHESIS_PROFILE=fuzz)."""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("default", max_examples=150, **_common)
settings.register_profile("medium", max_examples=1500, **_common)
settings.register_profile("fuzz", max_examples=10_000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
