"""Controllers: the wiring between a page and the engine, testable without widgets."""
