Feature: Faulty telemetry is accounted for, packet by packet
  Ground stations deliver corrupt, truncated, duplicated, late and replayed passes. Intake must account for
  every byte and every packet received; data that arrives after its chunk was reduced makes a new revision
  of that chunk, and the downstream product is re-issued, naming the revision it supersedes.

  Background:
    Given the local topology is provisioned

  Scenario: Corrupt, truncated, duplicated, late and replayed passes
    Given two days of telemetry with every delivery fault, the first pass held back
    When every pass but the held-back one is delivered to the incoming directory
    Then operations has ingested and reduced every delivered pass within 300 seconds
    When the held-back pass is delivered late
    Then operations has ingested and reduced every delivered pass within 300 seconds
    And the packet ledger covers every byte of every delivered file
    And every packet the ground stations received is ingested once, unless its only copies were corrupted
    And every quarantined byte range is a corrupted packet or the cut of a truncated pass
    And every duplicated packet and every replayed pass is recorded as a duplicate
    And the truncated pass is flagged as shorter than its sidecar says
    And the late pass made new revisions of the chunks it completes, for the reason late_data
    And the products of those chunks are re-issued, each naming the revision it supersedes
