Feature: The Main Database's synchronous standby, failover and switchover
  The primary commits only when the standby has the commit too (synchronous replication), and the standby
  serves the pipeline's reads. When the primary is lost, failover.yml promotes the standby and rejoins the
  old primary as the new standby (pg_rewind); the ingest watcher carries on against the new primary, and
  nothing is lost or written twice: validation, on a clone of operations taken before and fed the same
  deliveries, is the run that nothing interrupted. switchover.yml then swaps the two servers back in a
  planned way (run alone, the scenario switches over and back).

  Background:
    Given the local topology is provisioned

  Scenario: The standby is synchronous and serves the reads
    Then the primary streams to the standby, which is synchronous
    And a row committed on the primary is visible on the standby as soon as the commit returns
    And operations reads from the standby and writes to the primary

  Scenario: The primary is killed in the middle of an ingest: failover, resume, nothing lost or duplicated
    Given validation runs on a clone of operations, fed the same deliveries by the landing tee
    And a day and a half of telemetry with every delivery fault
    When they are delivered to the incoming directory
    And operations is writing it, within 120 seconds
    And the primary's postmaster is killed
    And failover.yml is run, within 900 seconds
    Then the standby is the primary now, and the old primary its synchronous standby
    And operations writes to the new primary
    And operations has ingested and reduced every delivery of the set within 900 seconds
    And validation has ingested and reduced every delivery of the set within 900 seconds
    And operations holds what validation holds, which no failure interrupted: every packet, chunk and transit, none missing, none twice

  Scenario: A planned switchover puts the inventory's primary back
    Given the servers' roles of the moment
    When switchover.yml makes the inventory's primary the primary, within 900 seconds
    Then the inventory's primary is the primary, and its standby is synchronous
    And the switchover is in the eLog
