#!/usr/bin/env python3
"""PyTorch training throughput and peak memory for BertForQuestionAnswering with the MiniLM-L6 config.

The baseline for `sparsec train` in BENCHMARKS.md. The model is built from
shared/models/minilm-l6-squad/config.json with random weights (transformers' own init, seed 0): speed and memory
do not depend on the weight values, and the shared folder has no PyTorch checkpoint. Inputs are random token ids,
every position real (attention_mask 1), token types 0 for the first third and 1 after, random answer positions.

Each step is what HF Trainer does: zero_grad, forward with the QA loss, backward, clip_grad_norm_(1.0),
AdamW step (no weight decay on biases and LayerNorm), linear LR schedule. `--warmup` untimed steps, then `--steps`
timed ones. Each configuration runs in its own child process, so that its peak RSS (getrusage ru_maxrss, which
includes the Python interpreter, torch and the model) is its own. Prints one JSON line per configuration.

    nice -n 10 python benches/train_pytorch.py [--batch-sizes 8,16] [--seq 384] [--steps 3] [--warmup 1] [--threads 2]
        [--autocast bf16]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT.parent / "shared" / "models" / "minilm-l6-squad" / "config.json"
if not DEFAULT_CONFIG.exists():
    DEFAULT_CONFIG = Path("/work/shared/models/minilm-l6-squad/config.json")


def rss_mib(field):
    """VmRSS (current) or VmHWM (peak) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def one(args):
    import torch
    import transformers
    from transformers import BertConfig, BertForQuestionAnswering, get_linear_schedule_with_warmup

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    config = BertConfig.from_json_file(str(args.config))
    if args.dropout == "off":
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = 0.0
    config._attn_implementation = "sdpa"
    model = BertForQuestionAnswering(config)
    model.train()

    no_decay = set()
    for mod_name, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, torch.nn.LayerNorm) or "bias" in pname:
                no_decay.add(f"{mod_name}.{pname}")
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n not in no_decay], "weight_decay": 0.01},
            {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0},
        ],
        lr=3e-5,
    )
    total = args.warmup + args.steps
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=total)

    b = args.batch
    lens = [int(x) for x in args.seq_lens.split(",")] if args.seq_lens else [args.seq]
    gen = torch.Generator().manual_seed(1)

    def batch_of(s):
        input_ids = torch.randint(1000, config.vocab_size, (b, s), generator=gen)
        attention_mask = torch.ones(b, s, dtype=torch.int64)
        token_type_ids = torch.zeros(b, s, dtype=torch.int64)
        token_type_ids[:, s // 3 :] = 1
        start = torch.randint(s // 3, s - 1, (b,), generator=gen)
        end = torch.minimum(start + torch.randint(0, 10, (b,), generator=gen), torch.tensor(s - 1))
        return input_ids, attention_mask, token_type_ids, start, end

    rss_before = rss_mib("VmRSS")
    times = []
    losses = []
    for step in range(total):
        input_ids, attention_mask, token_type_ids, start, end = batch_of(lens[step % len(lens)])
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                start_positions=start,
                end_positions=end,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(out.loss.item())
    timed = times[args.warmup :]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "impl": "pytorch",
        "model": "BertForQuestionAnswering, minilm-l6-squad config, random init",
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": b,
        "seq": args.seq if not args.seq_lens else lens,
        "threads": args.threads,
        "dropout": args.dropout,
        "autocast": args.autocast,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "samples_per_s": round(b * len(timed) / sum(timed), 3),
        "step_s_mean": round(sum(timed) / len(timed), 4),
        "step_s_min": round(min(timed), 4),
        "step_s_max": round(max(timed), 4),
        "peak_rss_mib": round(peak, 1),
        "rss_before_training_mib": round(rss_before, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "nice": os.nice(0),
    }
    print(json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--batch-sizes", default="8,16", help="comma-separated")
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--seq-lens", help="comma-separated padded length of each step (cycled); overrides --seq")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", choices=["config", "off"], default="config")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="bf16: the forward under torch.autocast('cpu', bfloat16) (f32 master weights)")
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.config.exists():
        sys.exit(f"error: {args.config}: no such file (the MiniLM config)")
    if args.steps < 1 or args.warmup < 0:
        sys.exit("error: --steps must be >= 1 and --warmup >= 0")
    if args.batch is not None:
        return one(args)
    for batch in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
        cmd = [
            sys.executable,
            __file__,
            "--config",
            str(args.config),
            "--seq",
            str(args.seq),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--dropout",
            args.dropout,
            "--autocast",
            args.autocast,
            "--batch",
            str(batch),
        ] + (["--seq-lens", args.seq_lens] if args.seq_lens else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    sys.exit(main())
