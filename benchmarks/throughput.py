"""Training throughput of one MiniLM (or `--backbone mpnet_base`) fine-tune (sequence length 128), full or
`--method lora`, in three setups, on identical data.

- `ours`: `stages.training.loop.fit_epochs`, the loop every strategy trains with (fused AdamW, bf16 autocast where
  bf16 is native (`ours bf16`; `ours fp32` on other CPUs), CUDA TF32, and on CPU the counter-based dropout of
  `stages/dropout.py`).
- `plain fp32`: the textbook PyTorch loop, no autocast.
- `hf trainer`: transformers' Trainer with default settings (fp32), and with `bf16=True` (`--trainer-bf16`).

Every setup starts from the same pretrained weights and trains on the same pre-tokenised batches (fixed length,
so tokens/step are exact). The first `--warmup` steps are not timed. A large bf16 and fp32 matmul measured in
the same run gives the roofline; achieved GFLOP/s use 6 x non-embedding params x tokens (embedding rows are
gathered, not multiplied, and would inflate the count ~2x for MiniLM); LoRA computes no weight gradients of the
frozen encoder, so its count is 4 x params x tokens. Issue 5's target on CPU: ours >= 1.5x plain fp32.

    .venv/bin/python benchmarks/throughput.py [--backbone minilm_l6|mpnet_base] [--method full|lora] [--threads 2]
        [--batch-size 16] [--steps 4] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = {"backbone": "minilm_l6", "max_length": 128, "pooling": "mean"}
N_CLASSES = 5
SETUPS = ("ours", "plain", "trainer")
# --method lora: peft LoRA on the attention's query and value projections (each backbone names them its own way)
LORA = {"r": 8, "alpha": 16, "targets": {"minilm_l6": ["query", "value"], "mpnet_base": ["q", "v"]}}


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dtype, device, *, n: int, reps: int) -> float:
    """Best-of-`reps` GFLOP/s of an n x n @ n x n matmul."""
    import torch

    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: thread pools, kernels, caches
    synchronize(device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def build_model(device, backbone_name: str = SPEC["backbone"], method: str = "full"):
    from stages.modalities import get_modality
    from stages.model import Classifier, make_head

    backbone = get_modality("text").build_backbone({**SPEC, "backbone": backbone_name}, pretrained=True)
    if method == "lora":  # as strategy `lora` builds it: the encoder frozen, adapters and head trained
        from peft import LoraConfig, get_peft_model

        backbone.encoder = get_peft_model(backbone.encoder, LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.1, target_modules=LORA["targets"][backbone_name]))
    return Classifier(backbone, make_head(backbone.feature_dim, N_CLASSES, hidden=0, dropout=0.1)).to(device)


def make_batches(tokenizer, *, n: int, seed: int) -> tuple[dict, "torch.Tensor"]:  # noqa: F821
    """`n` texts long enough to fill 128 tokens, tokenised to exactly 128, with random labels."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    words = ("the bank said profits rose as the market fell and the minister spoke about election plans while "
             "the striker scored twice and the film won awards for its new phone chip and broadband price").split()
    texts = [" ".join(rng.choice(words, 200)) for _ in range(n)]
    encoded = tokenizer(texts, truncation=True, max_length=SPEC["max_length"], padding="max_length", return_tensors="pt")
    return {k: encoded[k] for k in ("input_ids", "attention_mask")}, torch.from_numpy(rng.integers(0, N_CLASSES, n))


def step_batches(inputs: dict, labels, *, batch_size: int, steps: int, device):
    for step in range(steps):
        idx = slice(step * batch_size, (step + 1) * batch_size)
        yield {k: v[idx].to(device) for k, v in inputs.items()}, labels[idx].to(device)


def rate(stamps: list[float], *, warmup: int, batch_size: int) -> float:
    """Samples/s over the steps after warm-up; `stamps[i]` is when step i ended (stamps[0]: before step 0)."""
    timed = len(stamps) - 1 - warmup
    return timed * batch_size / (stamps[-1] - stamps[warmup])


def run_ours(model, inputs, labels, *, batch_size: int, steps: int, warmup: int, device) -> float:
    from stages.training.loop import fit_epochs

    stamps: list[float] = []

    def batches(epoch: int):
        # the generator resumes right after optimizer.step(): the time it is asked for the next batch ends a step
        for batch in step_batches(inputs, labels, batch_size=batch_size, steps=steps + warmup, device=device):
            synchronize(device)
            stamps.append(time.perf_counter())
            yield batch
        synchronize(device)
        stamps.append(time.perf_counter())

    fit_epochs(model, batches=batches, evaluate=lambda: 0.0, lr=3e-5, weight_decay=0.01, max_epochs=1, patience=1,
               device=device, on_epoch=lambda epoch, metrics: None)
    return rate(stamps, warmup=warmup, batch_size=batch_size)


def run_plain(model, inputs, labels, *, batch_size: int, steps: int, warmup: int, device) -> float:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    stamps = [time.perf_counter()]
    for batch, target in step_batches(inputs, labels, batch_size=batch_size, steps=steps + warmup, device=device):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(batch), target).backward()
        optimizer.step()
        synchronize(device)
        stamps.append(time.perf_counter())
    return rate(stamps, warmup=warmup, batch_size=batch_size)


def run_trainer(model, inputs, labels, *, batch_size: int, steps: int, warmup: int, device, bf16: bool) -> float:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels):
            logits = self.inner({"input_ids": input_ids, "attention_mask": attention_mask})
            return {"loss": torch.nn.functional.cross_entropy(logits.float(), labels), "logits": logits}

    n = (steps + warmup) * batch_size
    rows = [{"input_ids": inputs["input_ids"][i], "attention_mask": inputs["attention_mask"][i], "labels": labels[i]}
            for i in range(n)]
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps + warmup, learning_rate=3e-5,
            weight_decay=0.01, lr_scheduler_type="constant", bf16=bf16, use_cpu=device.type == "cpu",
            report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False, seed=0)
        # the same order as the other setups: no shuffling, so every setup sees identical batches
        trainer = Trainer(model=WithLoss(model), args=args, train_dataset=rows, callbacks=[Stamp()])
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)
        trainer.train()
    return rate(stamps, warmup=warmup, batch_size=batch_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default=SPEC["backbone"], choices=["minilm_l6", "mpnet_base"],
                        help="text backbone (mpnet_base: all-mpnet-base-v2, 109.5M parameters)")
    parser.add_argument("--method", default="full", choices=["full", "lora"],
                        help=f"full fine-tune, or LoRA r {LORA['r']} alpha {LORA['alpha']} on query and value")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setup")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setup")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each round times every setup once (interleaved), the median is reported")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {','.join(SETUPS)}")
    parser.add_argument("--trainer-bf16", action="store_true", help="also time the Trainer with bf16=True")
    parser.add_argument("--matmul-n", type=int, default=None, help="roofline matmul size (default 2048 CPU, 8192 CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="nominal peak for MFU (default: the measured matmul roofline of the dtype ours runs in)")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device visible to torch")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        raise SystemExit(f"error: --setups: unknown {unknown}; known: {list(SETUPS)}")

    n = args.matmul_n or (8192 if device.type == "cuda" else 2048)
    roof = {dtype: matmul_gflops(getattr(torch, dtype), device, n=n, reps=3 if device.type == "cpu" else 10)
            for dtype in ("bfloat16", "float32")}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"matmul roofline ({n}x{n}): bf16 {roof['bfloat16']:.1f} GFLOP/s, fp32 {roof['float32']:.1f} GFLOP/s")

    pristine = build_model(torch.device("cpu"), args.backbone, args.method)
    inputs, labels = make_batches(pristine.backbone.tokenizer, n=(args.steps + args.warmup) * args.batch_size, seed=0)
    params = sum(p.numel() for p in pristine.parameters())
    embedding = sum(p.numel() for name_, p in pristine.named_parameters() if "embeddings" in name_)
    per_param = 4 if args.method == "lora" else 6  # lora: no weight gradients for the frozen matrices
    flops_per_sample = per_param * (params - embedding) * SPEC["max_length"]
    trainable = sum(p.numel() for p in pristine.parameters() if p.requires_grad)
    print(f"{args.backbone} + linear head, {args.method}: {params / 1e6:.1f}M params ({(params - embedding) / 1e6:.1f}M "
          f"non-embedding, {trainable / 1e6:.2f}M trained), seq {SPEC['max_length']}, batch {args.batch_size}, "
          f"{args.steps} timed + {args.warmup} warm-up steps")

    from stages.model import amp_dtype

    runs: dict[str, tuple[str, Callable[..., float]]] = {}
    if "ours" in setups:
        # ours autocasts to bf16 only where bf16 is native (stages.model.amp_dtype): label it with what it runs
        ours_dtype = "bfloat16" if amp_dtype(device) is not None else "float32"
        runs[f"ours {'bf16' if ours_dtype == 'bfloat16' else 'fp32'}"] = (ours_dtype, run_ours)
    if "plain" in setups:
        runs["plain fp32"] = ("float32", run_plain)
    if "trainer" in setups:
        runs["hf trainer fp32"] = ("float32", lambda *a, **k: run_trainer(*a, **k, bf16=False))
        if args.trainer_bf16:
            runs["hf trainer bf16"] = ("bfloat16", lambda *a, **k: run_trainer(*a, **k, bf16=True))

    tf32 = torch.backends.cuda.matmul.allow_tf32
    rounds: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.repeats):
        # interleaved rounds, so a burst of load from elsewhere on a shared machine hits every setup alike
        for label, (dtype, fn) in runs.items():
            # ours runs as stages.train does (TF32 on CUDA); the fp32 baselines keep true fp32 matmuls
            torch.backends.cuda.matmul.allow_tf32 = label.startswith("ours") and device.type == "cuda"
            model = copy.deepcopy(pristine).to(device)
            rounds[label].append(fn(model, inputs, labels, batch_size=args.batch_size, steps=args.steps,
                                    warmup=args.warmup, device=device))
            del model
    torch.backends.cuda.matmul.allow_tf32 = tf32
    results = {label: (runs[label][0], statistics.median(values)) for label, values in rounds.items()}
    if args.repeats > 1:
        print("per round samples/s: " + "; ".join(f"{label} " + ", ".join(f"{v:.2f}" for v in values)
                                                 for label, values in rounds.items()))

    # MFU against the roofline of the dtype ours computes in: an emulated bf16 roofline (a CPU without native bf16,
    # where ours runs fp32) is no peak of anything that runs
    ours_roof = next((dtype for label, (dtype, _) in runs.items() if label.startswith("ours")), "bfloat16")
    peak = args.peak_tflops * 1e3 if args.peak_tflops else roof[ours_roof]
    baseline = results.get("plain fp32", (None, None))[1]
    print(f"\n{'setup (median)':16} {'samples/s':>10} {'tokens/s':>10} {'GFLOP/s':>9} {'% of own-dtype roofline':>24} "
          f"{'MFU':>6} {'vs plain fp32':>14}")
    for label, (dtype, samples_s) in results.items():
        gflops = samples_s * flops_per_sample / 1e9
        versus = f"{samples_s / baseline:13.2f}x" if baseline else f"{'-':>14}"
        print(f"{label:16} {samples_s:10.2f} {samples_s * SPEC['max_length']:10.0f} {gflops:9.1f} "
              f"{gflops / roof[dtype]:23.1%} {gflops / peak:6.1%} {versus}")
    peak_src = (f"--peak-tflops {args.peak_tflops}" if args.peak_tflops
                else f"the measured {'bf16' if ours_roof == 'bfloat16' else 'fp32'} matmul roofline")
    print(f"(MFU = achieved / {peak_src}; FLOPs = {per_param} x {(params - embedding) / 1e6:.1f}M x tokens)")
    ours = next((label for label in results if label.startswith("ours")), None)
    if baseline and ours and device.type == "cpu":
        ratio = results[ours][1] / baseline
        print(f"target ours >= 1.5x plain fp32 on CPU: {ratio:.2f}x -> {'met' if ratio >= 1.5 else 'missed'}")


if __name__ == "__main__":
    main()
