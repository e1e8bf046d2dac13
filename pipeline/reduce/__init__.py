"""Ground reduction of the decoded telemetry: image parameters (flux, centroid, background) per window."""
