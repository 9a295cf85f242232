"""`dpo-engine`: one module per command group; `main` assembles them, `base` holds what they share."""
