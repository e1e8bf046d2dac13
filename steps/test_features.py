"""The acceptance features, in the order an operator runs them: the comparison of validation with
operations first (its clone must be taken before any other telemetry of the session is delivered), then
the faults, the clone taken during ingest (which replaces validation's clone), and the alerts."""

from pytest_bdd import scenarios

scenarios("../features/validation_vs_operations.feature")
scenarios("../features/telemetry_faults.feature")
scenarios("../features/cloning.feature")
scenarios("../features/alerts.feature")
