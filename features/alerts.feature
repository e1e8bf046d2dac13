Feature: Photometric science alerts
  The alerts run scans the chunk revisions no run has scanned yet and stores the verdicts that pass every
  filter as candidates. Events injected by the simulator into replayed telemetry must produce candidates,
  and the real Gaia light curves replayed visit by visit must produce the alerts Gaia published.

  Background:
    Given the local topology is provisioned

  Scenario: Injected photometric events produce alert candidates
    Given a day of telemetry with injected photometric events on the working catalogue
    When it is delivered to the incoming directory
    Then operations has ingested and reduced every delivery of it within 300 seconds
    When the alerts run in operations
    Then the run scanned every chunk revision of the day
    And at least 60 percent of the injected events that changed a source by 1 magnitude or more at G 19 or brighter, on both fields of view, have a candidate
    And every candidate on an injected event's source is of the direction of the event

  Scenario Outline: A real Gaia light curve replayed produces its alert
    Given the light curve of <alert>, <what>, from the Gaia Science Alerts archive
    When it is replayed visit by visit through the alerts' evaluation
    Then a <detector> candidate is raised at the visit of the published alert <alert>
    And no candidate is raised at any visit before it

    Examples:
      | alert     | detector    | what                                  |
      | Gaia16aye | brightening | a microlensing event on a known star  |
      | Gaia16ams | fading      | a star that fades                     |
      | Gaia17cbp | new_source  | a superluminous supernova, no history |
