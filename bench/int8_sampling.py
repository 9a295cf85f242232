"""A sampler that reads fewer bytes a token: int8 weights for the Label page's sampling only?

Issue 34 asks for labeling at 1B at the person's pace on a 2-core CPU; without AMX, bf16
decoding is the limit (bench/README.md, "The whole loop in the window at 1B"). Before building
an int8 sampling copy, this measures it side by side against bf16 (the window's precision):

  speed    the 1B shape of `bench.real_size` (random weights), greedy decoding after a
           24-token prompt, seconds a token step at batches of 1-32 answers, for
           bf16                    the window's sampler today
           int8-dynamic            torch's dynamic int8 linears (fbgemm): int8 weights per
                                   output channel, activations quantised per token step
           int8-weight-only        int8 weights per output channel, bf16 activations
                                   (`torch._weight_int8pack_mm`)
  quality  the default model (SmolLM2-135M-Instruct, real weights: a random model has no
           answers to keep), teacher-forced on answers the fp32 model sampled for six
           prompts: the mean and p95 KL(fp32 || variant) of the next-token distribution per
           answer token, and how often the variant's top token is fp32's. bf16 is the bar: the
           window already samples in it.

    .venv/bin/python -m bench.int8_sampling                 # both parts
    .venv/bin/python -m bench.int8_sampling --parts quality

One JSON line per row in bench/results/int8_sampling.jsonl, naming the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from bench.common import RESULTS, machine_info, machine_row

PROMPTS = [
    "Give me a tip for staying focused while studying.", "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.", "What should I cook tonight with rice and eggs?",
    "How do I politely decline a meeting invitation?", "Summarise the water cycle for a child.",
]


def int8_dynamic(model, skip: tuple[str, ...] = ()):
    """`model` (a copy) with every nn.Linear (but those named in `skip`) an fbgemm dynamic int8
    linear, per-channel weights, fed fp32 and handing back the model's dtype."""
    import torch

    aq = torch.ao.quantization

    class Dynamic(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            f = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
            f.weight.data = lin.weight.detach().float().clone()
            if lin.bias is not None:
                f.bias.data = lin.bias.detach().float().clone()
            f.qconfig = aq.per_channel_dynamic_qconfig
            self.q = torch.ao.nn.quantized.dynamic.Linear.from_float(f)

        def forward(self, x):
            return self.q(x.float()).to(x.dtype)

    return _swap(model, Dynamic, skip)


def int8_weight_only(model, skip: tuple[str, ...] = ()):
    import torch

    class WeightOnly(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            w = lin.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
            self.register_buffer("w", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("s", scale.to(torch.bfloat16))
            self.bias, self.out = lin.bias, lin.out_features

        def forward(self, x):
            y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.w, self.s)
            y = y.reshape(*x.shape[:-1], self.out).to(x.dtype)
            return y if self.bias is None else y + self.bias

    return _swap(model, WeightOnly, skip)


def _swap(model, kind, skip):
    import torch

    model = copy.deepcopy(model)
    model.config.tie_word_embeddings = False  # the LM head gets its own int8 copy
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name not in skip:
                setattr(parent, name, kind(child))
    return model


def step_seconds(model, batch: int, new: int = 24, prompt: int = 24) -> float:
    import torch

    ids = torch.randint(0, 1000, (batch, prompt), generator=torch.Generator().manual_seed(batch))
    kw = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    return (time.perf_counter() - start) / new


def speed(batches: list[int]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from bench.real_size import model_dir

    bf16 = AutoModelForCausalLM.from_pretrained(model_dir("llama-3.2-1b"), dtype=torch.bfloat16).eval()
    variants = {"bf16": bf16, "int8-dynamic": int8_dynamic(bf16), "int8-weight-only": int8_weight_only(bf16)}
    rows = []
    for batch in batches:  # alternating the variants at each batch size: the machine's noise hits all alike
        for name, model in variants.items():
            s = step_seconds(model, batch)
            rows.append({"part": "speed", "model": "llama-3.2-1b shape", "sampler": name, "batch": batch,
                         "s_per_step": round(s, 4), "tokens_per_s": round(batch / s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def quality() -> list[dict]:
    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.generate import encode_prompt
    from dpo_engine.models import load_model

    ref = load_model("default", pick_device("cpu", "float32"))
    fp32, tok = ref.model, ref.tokenizer
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    variants = {"bf16": bf16, "int8-dynamic": int8_dynamic(bf16),
                "int8-dynamic, not down_proj/o_proj/lm_head": int8_dynamic(bf16, ("down_proj", "o_proj", "lm_head")),
                "int8-weight-only": int8_weight_only(bf16)}
    torch.manual_seed(0)
    texts = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([encode_prompt(tok, prompt)])
            out = fp32.generate(ids, max_new_tokens=96, do_sample=True, temperature=0.8, top_p=0.95,
                                pad_token_id=tok.pad_token_id)
            texts.append((ids.shape[1], out))
        rows = []
        for name, model in variants.items():
            kls, same = [], []
            for n, out in texts:
                p = torch.log_softmax(fp32(out).logits[0, n - 1:-1].float(), -1)
                q = torch.log_softmax(model(out).logits[0, n - 1:-1].float(), -1)
                kls.append((p.exp() * (p - q)).sum(-1))
                same.append((p.argmax(-1) == q.argmax(-1)).float())
            kl, agree = torch.cat(kls), torch.cat(same)
            rows.append({"part": "quality", "model": "SmolLM2-135M-Instruct", "sampler": name,
                         "tokens": int(kl.numel()), "kl_mean": round(kl.mean().item(), 4),
                         "kl_p95": round(kl.quantile(0.95).item(), 4), "top1_same": round(agree.mean().item(), 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    from dpo_engine._compat import quiet_transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="quality,speed")
    parser.add_argument("--batches", default="1,2,8,16,32")
    args = parser.parse_args(argv)
    quiet_transformers()
    rows = []
    if "quality" in args.parts:
        rows += quality()
    if "speed" in args.parts:
        rows += speed([int(b) for b in args.batches.split(",")])
    machine, day = machine_info(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "int8_sampling.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps({**row, "date": day, "machine": machine}) + "\n")
    print(machine_row(machine))


if __name__ == "__main__":
    main()
