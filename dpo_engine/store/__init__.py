"""The project file: schema and migrations (schema), the lock (lock), reads (read), the
Project with its writes (project), and import/export formats (formats). Below train and cli;
imports only the core."""
