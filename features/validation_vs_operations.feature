Feature: Validation and operations process the same telemetry alike
  The landing tee gives every delivery to operations and to validation, whose Main Database is a clone of
  operations'. Running the same release on the same telemetry, the two environments must end with identical
  Main Databases, chunk products, health events and alert candidates. The comparison (soc compare) lists
  every difference by table, key, column and values; its HTML report is kept under reports/.

  The telemetry sets of the examples are delivered together, after one clone, as a day's passes would
  arrive; each example then checks its own set and the comparison of the two environments.

  Background:
    Given the local topology is provisioned
    And a clone of operations has been taken for validation

  Scenario Outline: The <telemetry> replayed through both environments gives identical results
    When the <telemetry> is delivered to the incoming directory
    Then operations has ingested and reduced every delivery of the <telemetry> within 300 seconds
    And validation has ingested and reduced every delivery of the <telemetry> within 300 seconds
    And both environments have processed every delivery of this run within 300 seconds
    When the alerts run in operations and in validation
    Then the Main Database contents of operations and validation are identical
    And their chunk manifests are identical
    And their health events are identical
    And their alert candidates are identical

    Examples:
      | telemetry                |
      | clean day                |
      | faulty day               |
      | dense Galactic-plane day |
