"""The app's plumbing: the shared context (project, model, settings) and the torch worker thread."""
