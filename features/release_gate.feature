Feature: The release gate: a candidate release on validation beside the current one in operations
  A release reaches operations only after it has replayed telemetry beside the current release. The
  candidate, the pipeline's wheel built from a git revision, is deployed on the validation host alone
  (ansible-playbook candidate.yml -e candidate_revision=REV); operations keeps its release. After a fresh
  clone both take the same telemetry from the landing tee, and soc compare is the gate: identical results
  pass; any difference fails it, listed in the report with its table, key, column and values, and
  classified by area (intake, chunking, science, health, alerts, products). The candidate identical to
  operations' release runs last, which puts validation back on that release (so does the end of a run
  that stops earlier).

  Background:
    Given the local topology is provisioned

  Scenario: A candidate with a changed image-parameter setting fails the gate
    Given a candidate release built from a git revision that sets the image parameters' CONVERGENCE_TOL to 0.2
    When the candidate is deployed to validation within 600 seconds
    And a clone of operations is taken
    And a day of telemetry for the gate is delivered to the incoming directory
    Then both environments have processed every delivery of this run within 300 seconds
    And both environments reduced the chunks of the day
    And the gate fails, with differences in the science area
    And the report shows changed fluxes of transits, each with its key and both values
    And the intake area has no difference: the candidate changed what was computed, not what was received

  Scenario: A candidate built from the revision operations runs passes the gate
    Given a candidate release built from the git revision operations runs
    When the candidate is deployed to validation within 600 seconds
    And a clone of operations is taken
    And a day of telemetry for the gate is delivered to the incoming directory
    Then both environments have processed every delivery of this run within 300 seconds
    And both environments reduced the chunks of the day
    And the gate passes: the Main Databases and chunk products of operations and validation are identical
