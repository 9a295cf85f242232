"""Real model shapes, measured: LoRA DPO steps and a sampling round at 1-3B parameters.

    .venv/bin/python -m bench.real_size                              # the 1B shapes, this machine's precision
    .venv/bin/python -m bench.real_size --models llama-3.2-3b --max-gib 12
    .venv/bin/python -m bench.real_size --device cuda                # bf16 LoRA on a GPU
    .venv/bin/python -m bench.real_size --device cuda --four-bit     # QLoRA (needs the [gpu] extra)
    .venv/bin/python -m bench.real_size --device cuda --picker --budget-gib 8 --models llama-3.2-3b --tasks train
        # the run the model picker plans for an 8 GB card, as the Train page would start it

Each model is built from its published config values (written below; nothing is downloaded)
with random weights, saved once as bf16 safetensors under the bench cache
(`<dpo-studio cache>/bench/real-size/<name>`) with a byte-level tokenizer padded to the
model's vocabulary (so every id decodes) and a ChatML template. Then, each in its own
subprocess (so its peak RSS is its own):

    train   `dpo_engine.train.loop.train`, the app's own run: LoRA (rank 16, every linear of
            each block), 4 steps of batch 4 pairs (prompt ~40 tokens, answers ~150), the
            reference pass first, precision "auto", gradient checkpointing as the fit verdict
            (`catalog.fit.fit_verdict` at --budget-gib) picks; peak RSS (CUDA: peak allocated)
            beside the fit estimate of that mode, tokens/s of the steps after the first
    trl     the same run through TRL's DPOTrainer (peft LoRA with our rank, alpha, dropout and
            target modules; batch, steps, lr and max length alike; its fastest configuration
            found at 135M, bench/README "Training throughput": reference log-probs precomputed,
            gradient checkpointing only where ours has it on, bf16 where ours runs bf16);
            tokens/s counted as ours (prompt + chosen + rejected, no padding) over its step
            time after the first, and peak RSS, side by side with `train`
    sample  one batched sampling round as the Label page writes it: 4 prompts x 2 answers of
            32 new tokens in one batch (`generate.stream_generate_batch`) in the compute
            precision; seconds per token step and per answer token

--picker: instead of the bench's own batch, the run the window would start from the picker's
plan at --budget-gib (`catalog.fit.fit_verdict` over `run_plan.plan_run` with 4-bit where
bitsandbytes runs): its LoRA, base, checkpointing and micro-batch, over rows filled to the
512 tokens the picker plans for (2 micro-batches of 4 pairs, accumulated as the plan says);
the peak is then checked against the budget.

Prints one JSON line per result (and appends it to bench/results/real_size.jsonl with --record).
A model whose fit estimate exceeds --max-gib is skipped with the reason (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, module_command, module_env

# Published config.json values (Hugging Face model pages of each model; only the fields that
# shape the network; token ids are replaced by the bench tokenizer's).
# What the two sizes of one family share (rope, norms, vocabulary); each size adds its own shape.
LLAMA_3_2 = dict(model_type="llama", vocab_size=128256, intermediate_size=8192, num_key_value_heads=8,
                 max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                 rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192})
QWEN_2_5 = dict(model_type="qwen2", vocab_size=151936, num_key_value_heads=2, max_position_embeddings=32768,
                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, sliding_window=None,
                use_sliding_window=False)
CONFIGS = {
    "llama-3.2-1b": dict(LLAMA_3_2, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         head_dim=64),  # meta-llama/Llama-3.2-1B-Instruct
    "qwen2.5-1.5b": dict(QWEN_2_5, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12),  # Qwen/Qwen2.5-1.5B-Instruct
    "gemma-3-1b": dict(  # google/gemma-3-1b-it
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        sliding_window=512, sliding_window_pattern=6, final_logit_softcapping=None, attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
    "llama-3.2-3b": dict(LLAMA_3_2, hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                         head_dim=128),  # meta-llama/Llama-3.2-3B-Instruct
    "qwen2.5-3b": dict(QWEN_2_5, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16),  # Qwen/Qwen2.5-3B-Instruct
    "smoke": dict(  # not a published model: a 4-layer Llama to check this script in a minute
        model_type="llama", vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
DEFAULT_MODELS = ("llama-3.2-1b", "qwen2.5-1.5b", "gemma-3-1b")
STEPS, BATCH, PROMPT_BYTES, ANSWER_BYTES, MAX_LENGTH = 4, 4, 40, 150, 512
ROW_TOKENS = 220  # prompt (40 bytes + ChatML turns ~ 60 tokens) + answer (150 +- 10 bytes + end of turn)
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bench_dir() -> Path:
    from dpo_engine.paths import cache_dir

    return cache_dir() / "bench" / "real-size"


def build_tokenizer(vocab_size: int):
    """Byte-level: one token per byte plus ChatML's specials, padded with unused tokens up to
    `vocab_size` so that any id a random model samples decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for i in range(len(vocab), vocab_size):
        vocab[f"<unused{i}>"] = i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS)
    tok.chat_template = CHATML
    return tok


def model_dir(name: str) -> Path:
    """The model's folder, built once (random bf16 weights as safetensors + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = bench_dir() / name
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    values = dict(CONFIGS[name])
    tok = build_tokenizer(values["vocab_size"])
    config = AutoConfig.for_model(values.pop("model_type"), **values, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=bench_dir().parent if bench_dir().parent.exists()
                                else None))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def make_pairs(n: int, answer_bytes: int = ANSWER_BYTES):
    from dpo_engine.pairs import conversation

    rng = random.Random(0)
    words = "the a of to and light water plant leaf sun green food air root make grow".split()

    def text(n_bytes: int) -> str:
        out = ""
        while len(out) < n_bytes:
            out += rng.choice(words) + " "
        return out[:n_bytes]

    return [conversation(text(PROMPT_BYTES), text(answer_bytes + rng.randrange(-10, 11)),
                         text(answer_bytes + rng.randrange(-10, 11))) for _ in range(n)]


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def plan(folder: Path, args) -> tuple[bool, object, str]:
    """What the fit verdict picks for a LoRA run of this bench's batch at --budget-gib:
    (gradient checkpointing, MemoryEstimate of that mode, compute precision)."""
    from dpo_engine.catalog.sources import inspect_path
    from dpo_engine.catalog.fit import BF16_VALUE_BYTES, HEADROOM, training_memory
    from dpo_engine.run_plan import PlanRequest, plan_run

    shape = inspect_path(str(folder)).shape
    precision = plan_run(PlanRequest(args.device), measure=False).compute
    value_bytes = BF16_VALUE_BYTES if precision == "bfloat16" else 4
    base = "nf4" if args.four_bit else None
    row = ROW_TOKENS  # the longest row of a pair here (prompt + answer), not the 512 the picker plans for
    plain = training_memory(shape, True, BATCH, row, value_bytes, False, base)
    if plain.total <= args.budget_gib * 2**30 * HEADROOM:
        return False, plain, precision
    return True, training_memory(shape, True, BATCH, row, value_bytes, True, base), precision


def picker_plan(folder: Path, args):
    """(RunPlan, MemoryEstimate) of the model picker's verdict at --budget-gib: what the window
    hands the Train page for this model (`tests/test_model_choice.py` follows the same plan there)."""
    from dpo_engine import quant
    from dpo_engine.catalog.fit import BF16_VALUE_BYTES, fit_verdict, training_memory
    from dpo_engine.catalog.sources import inspect_path
    from dpo_engine.run_plan import PlanRequest, plan_run

    shape = inspect_path(str(folder)).shape
    budget = int(args.budget_gib * 2**30)
    verdict = fit_verdict(shape, budget, args.device, plan=plan_run(PlanRequest(args.device), shape.parameters,
                                                                    budget, measure=False),
                          four_bit=quant.catalog_reason(args.device))
    if verdict.plan is None:
        raise SystemExit(f"{folder.name}: {verdict.explain()}")
    p = verdict.plan
    memory = training_memory(shape, p.lora, verdict.micro_batch, MAX_LENGTH,
                             BF16_VALUE_BYTES if p.compute == "bfloat16" else 4, p.checkpointing,
                             p.base if p.lora else None)
    return p, memory


def child_train(name: str, args) -> dict:
    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.events import PrecisionChosen, StepEvent, TrainSummary
    from dpo_engine.train.loop import train

    folder = model_dir(name)
    checkpointing, memory, _ = plan(folder, args)
    fields = dict(lora=LoraSettings(), batch_size=BATCH, grad_accum=1, gradient_checkpointing=checkpointing,
                  base_bits=4 if args.four_bit else None)
    answer_bytes = ANSWER_BYTES
    if args.picker:
        p, memory = picker_plan(folder, args)
        batch, accum = p.effective_batch(BATCH, 1)
        fields = dict(lora=LoraSettings() if p.lora else None, batch_size=batch, grad_accum=accum,
                      gradient_checkpointing=p.checkpointing, base_bits=p.base_bits)
        checkpointing, answer_bytes = p.checkpointing, MAX_LENGTH - 60  # rows of ~512 tokens (1 byte a token)
    with tempfile.TemporaryDirectory(prefix="real-size-") as out:
        config = TrainConfig(output_dir=out, model=str(folder), max_steps=args.steps, max_length=MAX_LENGTH,
                             warmup_ratio=0.0, eval_fraction=0.0, save_every=0, device=args.device, seed=0, lr=1e-4,
                             **fields)
        steps, precision, summary = [], None, None
        start = time.perf_counter()
        for event in train(config, make_pairs(BATCH * args.steps, answer_bytes)):
            if isinstance(event, StepEvent):
                steps.append(event)
            elif isinstance(event, PrecisionChosen):
                precision = event.dtype
            elif isinstance(event, TrainSummary):
                summary = event
        wall = time.perf_counter() - start
    if summary is None or summary.status != "finished":
        raise SystemExit(f"training did not finish: {summary}")
    peak = peak_bytes(args.device)
    later = [s.tokens_per_s for s in steps[1:]] or [steps[0].tokens_per_s]
    base = "nf4" if config.base_bits == 4 else ("bf16" if precision == "bfloat16" else "fp32")
    return {"model": name, "task": "train", "device": args.device, "precision": precision,
            "base": base if config.lora else "fp32 (full)", "batch": [config.batch_size, config.grad_accum],
            "answer_bytes": answer_bytes, "gradient_checkpointing": checkpointing, "steps": len(steps),
            "peak_gb": round(peak / 1e9, 2), "budget_gb": round(args.budget_gib * 2**30 / 1e9, 2),
            "within_budget": peak <= args.budget_gib * 2**30,
            "estimate_gb": round(memory.total / 1e9, 2), "estimate_over_peak": round(memory.total / peak, 3),
            "tokens_per_s": round(sum(later) / len(later), 1),
            "step_s": [round(b.elapsed - a, 1) for a, b in zip([0.0] + [s.elapsed for s in steps], steps)],
            "wall_s": round(wall, 1)}


def child_trl(name: str, args) -> dict:
    """TRL DPOTrainer over the same model, pairs and settings as `child_train` (the docstring's `trl`)."""
    import sys

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dpo_engine._compat import quiet_transformers
    from dpo_engine.models import load_tokenizer, resolve_model_ref
    from dpo_engine.train.config import LoraSettings

    quiet_transformers()
    folder = model_dir(name)
    checkpointing, memory, precision = plan(folder, args)
    lora = LoraSettings()
    tokenizer = load_tokenizer(resolve_model_ref(str(folder)))
    data = Dataset.from_list([p.to_trl() for p in make_pairs(BATCH * args.steps)])
    bf16 = precision == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="bfloat16" if bf16 else "float32")
    with tempfile.TemporaryDirectory(prefix="real-size-trl-") as out:
        config = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                           learning_rate=1e-4, beta=0.1, max_length=MAX_LENGTH, max_steps=args.steps, warmup_steps=0,
                           lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to=[],
                           use_cpu=args.device == "cpu", seed=0, dataloader_num_workers=0, bf16=bf16,
                           precompute_ref_log_probs=True, gradient_checkpointing=checkpointing)
        peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM")

        class Counting(DPOTrainer):
            tokens: list[int] = []

            def _compute_loss(self, model, inputs, return_outputs):
                b = inputs["input_ids"].shape[0] // 2  # rows [0, b) prompt+chosen, [b, 2b) prompt+rejected
                Counting.tokens.append(int(inputs["attention_mask"][:b].sum() + inputs["completion_mask"][b:].sum()))
                return super()._compute_loss(model, inputs, return_outputs)

        class Timer(TrainerCallback):
            seconds: list[float] = []

            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                Timer.seconds.append(time.perf_counter() - self.t)
                print(f"trl step: {Timer.seconds[-1]:.1f} s", file=sys.stderr, flush=True)

        start = time.perf_counter()
        trainer = Counting(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                           peft_config=peft_config, callbacks=[Timer()])
        setup = time.perf_counter() - start  # tokenising and the precomputed reference pass
        trainer.train()
        wall = time.perf_counter() - start
    later = slice(1, None) if len(Timer.seconds) > 1 else slice(None)
    return {"model": name, "task": "trl", "device": args.device, "precision": "bfloat16" if bf16 else "float32",
            "gradient_checkpointing": checkpointing, "steps": len(Timer.seconds),
            "peak_gb": round(peak_bytes(args.device) / 1e9, 2),
            "tokens_per_s": round(sum(Counting.tokens[later]) / sum(Timer.seconds[later]), 1),
            "step_s": [round(t, 1) for t in Timer.seconds], "setup_s": round(setup, 1), "wall_s": round(wall, 1)}


def child_sample(name: str, args) -> dict:
    from dpo_engine.devices import pick_device
    from dpo_engine.generate import GenerationSettings, RowEnded, stream_generate_batch
    from dpo_engine.models import load_model

    folder = model_dir(name)
    device = pick_device(args.device)
    loaded = load_model(str(folder), device)
    rng = random.Random(1)
    words = "the a of to and light water plant leaf sun green food air root make grow".split()
    texts = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(4)]
    prompts = [t for t in texts for _ in range(2)]  # 4 prompts x 2 answers, one batch
    settings = GenerationSettings(max_new_tokens=32, temperature=0.8, seed=0)
    start = time.perf_counter()
    stream = stream_generate_batch(loaded.model, loaded.tokenizer, prompts, settings)
    tokens = sum(1 for e in stream if not isinstance(e, RowEnded))
    wall = time.perf_counter() - start
    return {"model": name, "task": "sample", "device": args.device, "precision": device.dtype, "rows": len(prompts),
            "answer_tokens": tokens, "seconds": round(wall, 1), "s_per_token_step": round(wall / 32, 3),
            "s_per_answer_token": round(wall / max(1, tokens), 3), "peak_gb": round(peak_bytes(args.device) / 1e9, 2)}


def run_child(name: str, task: str, args) -> dict:
    cmd = module_command(__spec__.name, "--child", name, task, "--device", args.device, "--steps", str(args.steps),
                         "--budget-gib", str(args.budget_gib), *(["--four-bit"] if args.four_bit else []),
                         *(["--picker"] if args.picker else []))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=module_env())
    if proc.returncode != 0:
        return {"model": name, "task": task, "error": proc.stderr.strip()[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return f"{model or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"any of {', '.join(CONFIGS)}")
    ap.add_argument("--tasks", default="train,sample")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps of the training run")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--four-bit", action="store_true", help="NF4 frozen base through bitsandbytes")
    ap.add_argument("--picker", action="store_true", help="train as the picker's plan at --budget-gib says (docstring)")
    ap.add_argument("--budget-gib", type=float, default=16.0, help="memory the fit verdict plans for (a 16 GB laptop)")
    ap.add_argument("--max-gib", type=float, default=12.0, help="skip a model whose fit estimate exceeds this")
    ap.add_argument("--record", action="store_true", help="append the results to bench/results/real_size.jsonl")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, task = args.child
        print(json.dumps({"train": child_train, "trl": child_trl, "sample": child_sample}[task](name, args)))
        return
    where = machine() if args.device == "cpu" else args.device
    for name in args.models.split(","):
        folder = model_dir(name)  # built here once, not inside a measured child
        estimate = (picker_plan(folder, args) if args.picker else plan(folder, args))[1].total
        for task in args.tasks.split(","):
            if task in ("train", "trl") and estimate > args.max_gib * 2**30:
                row = {"model": name, "task": task, "skipped": f"fit estimate {estimate / 2**30:.1f} GiB > "
                                                               f"--max-gib {args.max_gib}"}
            else:
                row = run_child(name, task, args)
            row.update(machine=where, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            print(json.dumps(row), flush=True)
            if args.record:
                with open(RESULTS / "real_size.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
