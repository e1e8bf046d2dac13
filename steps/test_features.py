"""The acceptance features, in the order an operator runs them: the comparison of validation with
operations first (its clone must be taken before any other telemetry of the session is delivered), then
the faults, the clone taken during ingest (which replaces validation's clone), the alerts, the release gate
(its own clones and candidates), and last the replication drills (they change which server is the
primary)."""

from pytest_bdd import scenarios

scenarios("../features/validation_vs_operations.feature")
scenarios("../features/telemetry_faults.feature")
scenarios("../features/cloning.feature")
scenarios("../features/alerts.feature")
scenarios("../features/release_gate.feature")
scenarios("../features/replication.feature")
