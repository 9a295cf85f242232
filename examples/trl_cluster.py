"""Train a DPO Studio project's pairs with TRL's DPOTrainer on a cluster.

    dpo-engine export --project my.dpo train.jsonl --format trl --split train
    dpo-engine export --project my.dpo eval.jsonl --format trl --split eval
    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml examples/trl_cluster.py \\
        --model HuggingFaceTB/SmolLM2-1.7B-Instruct --train train.jsonl --eval eval.jsonl --output out/

The exported JSONL is TRL's conversational preference format (prompt / chosen / rejected
message lists), so `datasets` reads it and DPOTrainer applies the model's chat template.
Settings mirror `dpo-engine train`'s defaults (sigmoid loss, beta 0.1, linear schedule
with 10% warmup, the reference precomputed once).
"""

from __future__ import annotations

import argparse


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hub id or local folder of the starting policy.")
    p.add_argument("--train", required=True, help="dpo-engine export --format trl --split train output.")
    p.add_argument("--eval", default=None, help="The --split eval export (optional).")
    p.add_argument("--output", required=True)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-7)  # TRL's DPO default; raise it for small models
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4, help="Pairs per GPU per micro-batch.")
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    return p.parse_args()


def main() -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = parse_args()
    files = {"train": args.train, **({"eval": args.eval} if args.eval else {})}
    data = load_dataset("json", data_files=files)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    config = DPOConfig(
        output_dir=args.output, beta=args.beta, learning_rate=args.lr, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length, lr_scheduler_type="linear", warmup_steps=0.1, bf16=bf16,
        precompute_ref_log_probs=True,  # as DPO Studio: one reference pass, then one model per step
        eval_strategy="epoch" if args.eval else "no", save_strategy="epoch", logging_steps=10,
        report_to="none",
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data.get("eval"),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output)


if __name__ == "__main__":
    main()
