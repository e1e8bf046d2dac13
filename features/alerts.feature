Feature: Photometric science alerts
  The alerts run scans the chunk revisions no run has scanned yet and stores the verdicts that pass every
  filter as candidates. Events injected by the simulator into replayed telemetry must produce candidates,
  and the real Gaia light curves replayed visit by visit must produce the alerts Gaia published. A visit is
  a source's transits that one alerts run takes (a day's, as in operations): the detectors raise a source
  when every one of them departs from its history, or from its catalogue G when it has too little history
  (the same count as `soc alerts recall`, which measured 99 % on such visits).

  Background:
    Given the local topology is provisioned

  Scenario: Injected photometric events produce alert candidates
    Given a day of telemetry with injected photometric events on the working catalogue
    When it is delivered to the incoming directory
    Then operations has ingested and reduced every delivery of it within 300 seconds
    When the alerts run in operations
    Then the run scanned every chunk revision of the day
    And at least 90 percent of the visits where an injected event changed every transit of a source by 1 magnitude or more, at G 19 or brighter, on both fields of view, have a candidate
    And every candidate on those visits is of the direction of the change

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
