Feature: A clone of operations, taken while operations ingests
  Validation works on a btrfs-snapshot clone of operations' hot standby (soc-clone take). Taking it must
  not hold operations up beyond the bound, must give a consistent database, and is itself the proof that
  the standby's copy restores into a working server: every take is recorded in operations' eLog.

  Background:
    Given the local topology is provisioned

  Scenario: A clone taken while operations ingests is consistent and recorded
    Given a reference telemetry set has been ingested by operations, and its ingest rate measured
    When a telemetry set of the same size is delivered to the incoming directory
    And operations is writing it, within 60 seconds
    And a clone of operations is taken
    Then the clone is ready within 60 seconds
    And soc-clone verified the clone: promoted on a new timeline, at or after the standby's position, catalogs and bookkeeping tables checked
    And every delivery in the clone holds exactly the packets operations recorded for it
    And the take is recorded in operations' eLog with its position and its time to ready
    And operations has ingested and reduced every delivery of the set within 300 seconds
    And operations ingested the set at no less than 0.25 of the reference rate
    And validation has ingested and reduced every delivery of the set within 300 seconds
    And the intake tables of operations and validation are identical
