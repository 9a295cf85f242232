"""Peak memory of DPO training steps, to calibrate the catalog's fit estimate (dpo_engine.catalog.fit).

Full fine-tune, fp32 on the CPU, two AdamW steps (the second holds the optimizer moments
while the activations of the forward/backward are alive), each a forward + backward of
dpo_engine.logps.sequence_logps over ROWS random rows of LENGTH tokens, the second half of
each row scored. Prints the measured peak RSS next to the catalog's estimate.

    python -m bench.catalog_memory --length 256 --rows 4     # 2 pairs
    python -m bench.catalog_memory --length 512 --rows 8     # 4 pairs: the Train page's default batch

Measured (SmolLM2-135M-Instruct, 2-core EPYC, torch 2.13 CPU, 2 Dec 2026): 4 x 256 -> 4.17 GB peak RSS
(estimate 4.97 GB, 1.19x), 8 x 512 -> 10.21 GB (estimate 11.54 GB, 1.13x).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8, help="sequences: 2 x pairs")
    args = ap.parse_args()

    from dpo_engine.catalog.sources import inspect_path
    from dpo_engine.catalog.fit import training_memory
    from dpo_engine.logps import sequence_logps
    from dpo_engine.models import load_model, resolve_model_ref

    loaded = load_model(args.model, None)
    model = loaded.model.float().train()
    model.config.use_cache = False
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.rows, args.length))
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, args.length // 2:] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
    start = time.time()
    for _ in range(2):
        logps, _ = sequence_logps(model, ids, torch.ones_like(ids), response)
        logps.sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = inspect_path(resolve_model_ref(args.model).path).shape
    estimate = training_memory(shape, lora=False, batch_pairs=args.rows // 2, max_length=args.length).total
    print(json.dumps({"model": loaded.name, "rows": args.rows, "length": args.length, "peak_rss": peak,
                      "estimate": estimate, "ratio": round(estimate / peak, 3), "seconds": round(time.time() - start)}))


if __name__ == "__main__":
    main()
