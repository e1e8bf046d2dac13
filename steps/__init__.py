"""Step definitions and fixtures of the acceptance features (features/*.feature), run by pytest-bdd."""
