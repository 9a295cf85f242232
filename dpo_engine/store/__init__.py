"""The project file: schema and migrations (schema), the lock (lock), the Project with its
labeling data (project) and its training runs (run_records), and import/export formats
(formats). Below train and cli; imports only the core."""
