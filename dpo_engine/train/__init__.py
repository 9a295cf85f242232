"""Training: config, data (split, encode, batch), one step, the reference pass, checkpoints,
multi-process plumbing, the loop (loop.train) and the events it yields. Above store."""
