"""Shared test set-up.

Hypothesis runs under the "ci" profile by default: on a busy 2-core machine the default
200 ms deadline fails examples for timing noise, not for bugs. HYPOTHESIS_PROFILE=dev keeps
the deadline for local runs that want it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
