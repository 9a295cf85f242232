"""The project file: schema and migrations (schema), opening it (opening, with the lock in lock),
what a project writes (project: labeling data; run_records: training runs), what it reads
(queries, returning the frozen rows of rows), and import/export formats (formats). Below train
and cli; imports only the core."""
