"""One training step of each stage at the paper's sizes, its seconds and peak memory beside
`namd check`'s estimate (namd.sizing), and DDIM sampling (issue 15, parts 2 and 3).

    python benchmarks/paper_size.py                       # CPU, true size: ~15 GB of RAM, minutes
    python benchmarks/paper_size.py --device cuda --precisions fp32,bf16 --sample-nodules 450
    benchmarks/gpu_paper.sh                               # the GPU run, on a machine without diffusers

Stages, each in its own subprocess so that every peak is its own:
  vae     the SD1.5-layout VAE (paper preset), batch 64: Equation 6 via namd.training.vae.VAETask
  prior   SD1.5's U-Net (stage 1: 4 input channels, cross-attention at stage 1's context width)
          at the 4 x 8 x 8 latent, batch 16: PriorTask (Equation 9)
  cond    the U-Net with 8 input channels at D = 2560 and the soft prompts, through a
          Gemma-3-shaped language model (MedGemma 1.5 4B's text config with 2 layers, random
          weights, a word-level vocabulary of the report sentences), saved to a local folder and
          loaded by the package's own LLMContextEncoder.from_config: CondTask (Equation 10), batch 8
  ddim    one DDIM step of the cond U-Net at batch 8 (namd.inference.sampler.denoise)
  sample  K x steps DDIM for N nodules (namd.inference.sampler.sample_latents, sampling.max_batch per call)
          and the VAE decode of the K x N latents (namd.inference.sampler.decode_to_hu)

A training step is the shared trainer's inner loop (namd.training.trainer) without its files:
the task's loss under autocast (bf16 runs), zero_grad(set_to_none), backward, clip_grad_norm_,
AdamW.step. Two steps run; the second is timed as the steady step (the first also creates
AdamW's states). Peak: on a CPU the child's resident high-water mark (VmHWM; reset once the
networks are built, so that loading transients are left out) minus its resident size after the
imports and a tiny warm-up step, before the networks, with glibc's mmap threshold fixed
(MMAP_THRESHOLD) so that freed memory leaves the resident size; on CUDA
torch.cuda.max_memory_allocated. The estimate is
namd.sizing.estimate_stage for the same config, batch and language model ('cpu' or 'cuda'
rules for AdamW's temporaries); agreement = estimate / measured - 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TRAIN_STAGES = ("vae", "prior", "cond")
# glibc serves allocations above this from mmap and returns them to the system when freed. Its
# default threshold grows as large blocks are freed, after which freed temporaries stay resident
# between live tensors and the resident size overstates live memory (tiny VAE: +30%); a fixed
# threshold makes the CPU peak count live tensors, as torch.cuda.max_memory_allocated does.
MMAP_THRESHOLD = 65536
LM_LAYERS = 2


# -- the configuration every child and the estimate share ----------------------------------------
def bench_config(lm_dir: str | None, precision: str, stage: str, preset: str = "paper"):
    """The preset with the Gemma-shaped model as text.model, and bf16 autocast (plus a bfloat16
    language model) for `stage` when precision is bf16."""
    from namd.config import load_config

    sets = ["text.standardize=false"]
    if lm_dir:
        sets += [f"text.model={lm_dir}", "text.dtype=" + ("bfloat16" if precision == "bf16" else "float32")]
    if precision == "bf16" and stage in TRAIN_STAGES:
        section = {"vae": "vae.train", "prior": "diffusion.prior", "cond": "diffusion.cond"}[stage]
        sets.append(f"{section}.mixed_precision=bf16")
    return load_config(preset, overrides=sets)


def save_gemma_shaped(folder: Path, layers: int = LM_LAYERS, seed: int = 0) -> Path:
    """A Gemma-3-shaped causal LM at D = 2560 (random weights, `layers` layers, a word-level
    vocabulary of report sentences), saved as a Hugging Face folder with its tokenizer."""
    from transformers import Gemma3ForCausalLM

    from namd.cohort.ehr import report_sentence
    from namd.sizing.language_model import medgemma_text_config, probe_records, word_tokenizer

    tok = word_tokenizer([report_sentence(e) for e in probe_records(512)] + [""])
    config = medgemma_text_config(num_hidden_layers=layers, vocab_size=len(tok),
                                  max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- the child: one stage, one precision -----------------------------------------------------------
def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident size now (VmRSS) or its peak (VmHWM), from /proc/self/status."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark to the current size (Linux >= 4.0), so the
    peak read later is that of what follows, not of the imports before."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _task(stage: str, config, batch: int, device: torch.device):
    """(task, batch dict, train config) of a training stage, networks on `device`."""
    from namd.cohort.ehr import NODULE_FIELDS
    from namd.cohort.imaging import ROTATIONS
    from namd.models.schedules import training_scheduler
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape
    from namd.sizing import prior_context_shape, probe_records

    c, h, w = latent_shape(config.vae, config.data.crop_size)
    rot = len(ROTATIONS)
    if stage == "vae":
        from namd.models.probe import LinearProbe
        from namd.models.vae import build_vae
        from namd.training.vae import VAETask

        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs (fast on a GPU)
            vae, probe = build_vae(config.vae), LinearProbe((c, h, w))
        task = VAETask(vae, probe, config.vae, True, (1.0, 1.0), _lpips(config, device))
        s = config.data.crop_size
        data = {"image": torch.rand(batch, config.vae.in_channels, s, s) * 2 - 1,
                "features": torch.randn(batch, len(NODULE_FIELDS)), "label": (torch.arange(batch) % 2).float()}
        return task, data, config.vae.train
    sched = training_scheduler(config.diffusion)
    if stage == "prior":
        from namd.training.diffusion import PriorTask

        tokens, width = prior_context_shape(config, (config.text.n_prompt_sets, _dim(config)))
        with torch.device(device):
            unet = build_unet(config.diffusion.unet, in_channels=c, out_channels=c,
                              cross_attention_dim=width, sample_size=h, seed=0)
        task = PriorTask(unet, sched, torch.zeros(1, tokens, width), True, config.diffusion.snr_gamma)
        return task, {"z": torch.randn(batch, rot, c, h, w)}, config.diffusion.prior
    from namd.models.context_factory import build_context_encoder
    from namd.training.diffusion import CondTask

    encoder = build_context_encoder(config.text).to(device).eval()
    with torch.device(device):
        unet = build_unet(config.diffusion.unet, in_channels=2 * c, out_channels=c,
                          cross_attention_dim=encoder.dim, sample_size=h, seed=0)
    task = CondTask(unet, sched, encoder, False, True, config.diffusion.condition_dropout,
                    config.diffusion.cond_draws, config.diffusion.snr_gamma)
    data = {"z1": torch.randn(batch, rot, c, h, w), "z2": torch.randn(batch, rot, c, h, w),
            "ehr": probe_records(batch)}
    return task, data, config.diffusion.cond


def _dim(config) -> int:
    """D of the configured context encoder, from its config alone."""
    from namd.sizing import language_model_spec

    return int(language_model_spec(config.text).config.hidden_size)


def _lpips(config, device: torch.device):
    """L_LPIPS's frozen VGG with random weights when vae.lambda_lpips > 0 (read back from a
    safetensors file through the package's loader), else None."""
    if config.vae.lambda_lpips <= 0:
        return None
    from safetensors.torch import save_file

    from namd.models.alignment import PerceptualLoss
    from namd.models.lpips import LPIPSNet

    path = Path(tempfile.mkdtemp()) / "lpips_random.safetensors"
    save_file({k: v.contiguous() for k, v in LPIPSNet().state_dict().items()}, str(path))
    return PerceptualLoss(path).to(device)


def networks_built(device: torch.device) -> None:
    """Start the peak here: the networks are resident (and counted, as the difference to the
    baseline), but transients of building or loading them (a float32 checkpoint converted to
    bfloat16, say) are not part of a training step."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_child(stage: str, config, batch: int, device: torch.device, precision: str) -> dict:
    """Two training steps of `stage`; seconds of each and the peak memory."""
    task, data, tcfg = _task(stage, config, batch, device)
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    params = [p for m in task.trainable().values() for p in m.parameters() if p.requires_grad]
    for m in task.trainable().values():
        m.train()
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    networks_built(device)
    seconds = []
    for step in range(2):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            loss, _ = task.loss(data, torch.Generator().manual_seed(step), True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        optimizer.step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return {"seconds_first": seconds[0], "seconds": seconds[1], "loss": float(loss.detach()),
            "trainable": sum(p.numel() for p in params)}


def _cond_unet(config, device: torch.device, dtype: torch.dtype):
    """The cond U-Net (8 inputs, D wide), frozen, in `dtype`, and the latent shape."""
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape

    c, h, w = latent_shape(config.vae, config.data.crop_size)
    with torch.device(device):
        unet = build_unet(config.diffusion.unet, in_channels=2 * c, out_channels=c,
                          cross_attention_dim=_dim(config), sample_size=h, seed=0)
    return unet.to(dtype).eval().requires_grad_(False), (c, h, w)


def ddim_child(config, batch: int, device: torch.device, precision: str, steps: int) -> dict:
    """Seconds of one DDIM step at `batch` (mean over `steps` after a one-step warm-up)."""
    from namd.config import validated_update
    from namd.inference.sampler import denoise
    from namd.models.schedules import training_scheduler

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    unet, shape = _cond_unet(config, device, dtype)
    schedule = dict(training_scheduler(config.diffusion).config)
    m, d = config.text.n_prompt_sets, _dim(config)
    args = [torch.randn(batch, *shape).to(device, dtype), torch.randn(batch, *shape).to(device, dtype),
            torch.randn(batch, m, d).to(device, dtype), torch.zeros(m, d).to(device, dtype),
            [torch.Generator().manual_seed(i) for i in range(batch)]]
    networks_built(device)
    denoise(unet, schedule, validated_update(config.sampling, {"steps": 1}), *args)
    _sync(device)
    start = time.perf_counter()
    denoise(unet, schedule, validated_update(config.sampling, {"steps": steps}), *args)
    _sync(device)
    return {"seconds": (time.perf_counter() - start) / steps, "steps": steps}


def sample_child(config, device: torch.device, precision: str, nodules: int, k: int, steps: int) -> dict:
    """Seconds to draw K samples of `steps` DDIM steps for `nodules` nodules, then decode them."""
    from namd.config import validated_update
    from namd.inference.sampler import Conditioning, decode_to_hu, sample_latents
    from namd.models.schedules import training_scheduler
    from namd.models.vae import build_vae

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    unet, shape = _cond_unet(config, device, dtype)
    with torch.device(device):
        vae = build_vae(config.vae).to(dtype).eval().requires_grad_(False)
    m, d = config.text.n_prompt_sets, _dim(config)
    cond = Conditioning([f"n{i}" for i in range(nodules)], torch.randn(nodules, *shape),
                        torch.randn(nodules, m, d), torch.zeros(m, d))
    scfg = validated_update(config.sampling, {"k": k, "steps": steps})
    schedule = dict(training_scheduler(config.diffusion).config)
    networks_built(device)
    _sync(device)
    start = time.perf_counter()
    latents = sample_latents(unet, schedule, cond, scfg, shape, device, show_progress=False)
    _sync(device)
    sampled = time.perf_counter() - start
    crops = decode_to_hu(vae, latents.flatten(0, 1), 1.0, tuple(config.data.window_hu),
                         config.sampling.aux_batch, device)
    _sync(device)
    return {"seconds_sampling": sampled, "seconds_decode": time.perf_counter() - start - sampled,
            "seconds": time.perf_counter() - start, "samples": int(crops.shape[0]),
            "nodules": nodules, "k": k, "steps": steps, "max_batch": scfg.max_batch}


def warm_up(config, device: torch.device) -> None:
    """Import every module a child uses and run one tiny training step of a small U-Net, so
    that imports, thread pools and kernel caches are in the resident size before the baseline
    is read, not in the measured peak."""
    import namd.inference.sampler  # noqa: F401
    import namd.models.context_factory  # noqa: F401
    import namd.training.diffusion  # noqa: F401
    import namd.training.vae  # noqa: F401
    from namd.config import UNetConfig
    from namd.models.unet import build_unet
    from namd.sizing import language_model_spec

    if config.text.encoder == "llm":
        import transformers

        spec = language_model_spec(config.text)
        getattr(transformers, spec.config.architectures[0] if spec.config.architectures else "AutoModel")
    unet = build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2),
                      in_channels=4, out_channels=4, cross_attention_dim=8, sample_size=4).to(device)
    opt = torch.optim.AdamW(unet.parameters())
    x = torch.randn(2, 4, 4, 4, device=device)
    unet(x, torch.tensor([1, 2], device=device), encoder_hidden_states=torch.randn(2, 2, 8, device=device)
         ).sample.pow(2).mean().backward()
    opt.step()
    del unet, opt


def child(args: argparse.Namespace) -> None:
    """Run one stage and print its record as the last line of stdout (JSON)."""
    device = torch.device(args.device)
    config = bench_config(args.lm_dir, args.precision, args.child, args.preset)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (paper: 32-bit)
        torch.backends.cudnn.allow_tf32 = False
    warm_up(config, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reset = reset_peak()
    base = rss_bytes()
    if args.child in TRAIN_STAGES:
        out = train_child(args.child, config, args.batch, device, args.precision)
    elif args.child == "ddim":
        out = ddim_child(config, args.batch, device, args.precision, args.ddim_steps)
    else:
        out = sample_child(config, device, args.precision, args.sample_nodules, args.sample_k, args.sample_steps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # without the reset, ru_maxrss may still hold a peak of the imports (an overstatement)
        peak = (rss_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    print(json.dumps({**out, "peak_bytes": int(peak), "rss_before_bytes": base, "peak_reset": reset}))


# -- the parent: children, estimates, the results files --------------------------------------------
def run_child(args: argparse.Namespace, stage: str, precision: str, batch: int, lm_dir: str) -> dict:
    """One child process; its JSON record (or the error it ended with)."""
    cmd = [sys.executable, __file__, "--child", stage, "--precision", precision, "--device", args.device,
           "--child-batch", str(batch), "--lm-dir", lm_dir, "--preset", args.preset, "--threads", str(args.threads),
           "--ddim-steps", str(args.ddim_steps), "--sample-nodules", str(args.sample_nodules),
           "--sample-k", str(args.sample_k), "--sample-steps", str(args.sample_steps)]
    print(f"[paper_size] {stage} {precision} batch {batch} ...", file=sys.stderr, flush=True)
    env = {**os.environ, "NAMD_NO_PROGRESS": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    if os.environ.get("PAPER_SIZE_DEBUG"):
        print(" ".join(cmd), proc.stderr[-3000:], file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate(stage: str, precision: str, batch: int, lm_dir: str, args: argparse.Namespace) -> dict:
    """namd.sizing's estimate for what the child ran."""
    from namd.sizing import estimate_stage, language_model_spec

    config = bench_config(lm_dir, precision, stage, args.preset)
    lm = language_model_spec(config.text)
    est = estimate_stage(config, stage, batch, "cuda" if args.device == "cuda" else "cpu", lm)
    return {"total_bytes": est.total, "weights": est.weights, "grads": est.grads, "adam": est.adam,
            "activations": est.activations, "step_temp": est.step_temp, "params": est.params,
            "trainable": est.trainable}


def default_batch(stage: str, args: argparse.Namespace) -> int:
    """--batch STAGE=N, else the preset's batch (ddim: 8)."""
    for item in args.batch_override:
        name, _, value = item.partition("=")
        if name == stage:
            return int(value)
    if stage == "ddim":
        return 8
    from namd.sizing import stage_batch

    return stage_batch(bench_config(None, "fp32", stage, args.preset), stage)


def measure(args: argparse.Namespace, lm_dir: str, done: Callable[[list[dict]], object]) -> list[dict]:
    """Every (stage, precision) child with its estimate; `done(rows)` after each (the results
    files are rewritten as the run goes, so a run stopped by a time limit keeps its rows)."""
    rows: list[dict] = []
    precisions = args.precisions.split(",")
    for precision in precisions:
        for stage in args.stages.split(","):
            if stage == "sample" and precision != (args.sample_precision or precisions[-1]):
                continue  # sampling once
            batch = default_batch(stage, args) if stage != "sample" else 0
            row = {"stage": stage, "precision": precision, "batch": batch,
                   **run_child(args, stage, precision, batch, lm_dir)}
            if stage in TRAIN_STAGES and "error" not in row:
                row["estimate"] = estimate(stage, precision, batch, lm_dir, args)
                row["agreement"] = row["estimate"]["total_bytes"] / row["peak_bytes"] - 1
            rows.append(row)
            done(rows)
    return rows


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def _row(r: dict) -> str:
    """One table row of a child's record."""
    head = f"| {r['stage']} | {r['precision']} | {r['batch'] or ''} |"
    if "error" in r:
        return f"{head} | error: {r['error'][:200]} | | | |"
    if r["stage"] in TRAIN_STAGES:
        est = r["estimate"]
        return (f"{head} {est['params'] / 1e6:.1f} M / {r['trainable'] / 1e6:.1f} M | {r['seconds_first']:.2f} / "
                f"{r['seconds']:.2f} | {_gb(r['peak_bytes'])} | {_gb(est['total_bytes'])} (activations "
                f"{_gb(est['activations'])}) | {100 * r['agreement']:+.1f}% |")
    if r["stage"] == "ddim":
        return f"{head} inference | {r['seconds']:.3f} per DDIM step | {_gb(r['peak_bytes'])} | | |"
    return (f"| sample: {r['nodules']} nodules x K = {r['k']} x {r['steps']} DDIM steps (max_batch "
            f"{r['max_batch']}), then the VAE decode | {r['precision']} | | inference | {r['seconds_sampling']:.1f} "
            f"+ {r['seconds_decode']:.1f} | {_gb(r['peak_bytes'])} | | |")


def markdown(record: dict) -> str:
    """The results page: machine, table, what each stage holds, how peaks are measured."""
    a, m = record["args"], record["machine"]
    lines = [f"# The paper's sizes, one step per stage ({a['device']})", "", f"`{record['command']}`", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, transformers "
             f"{record['versions']['transformers']}, diffusers {record['versions']['diffusers']}, Python "
             f"{record['versions']['python']}; {record['device_name']}.", ""]
    if record.get("label"):
        lines += [f"**{record['label']}**", ""]
    lines += ["| stage | precision | batch | params / trainable | seconds (1st / 2nd step) | peak GB (measured) | "
              "estimate GB (`namd.sizing`) | estimate / measured - 1 |", "|---|---|---|---|---|---|---|---|",
              *(_row(r) for r in record["rows"]), "",
              "- vae: the SD1.5-layout VAE with Equation 6 as the paper preset sets it (L_LPIPS on: a VGG-16 "
              "with random weights read through `namd.models.lpips`; dropout, tanh output, the probe of L_pred).",
              "- prior: SD1.5's U-Net (4 inputs) at the 4 x 8 x 8 latent, cross-attending to stage 1's null "
              "context (diffusion.null_context: CLIP's empty prompt, 77 x 768).",
              "- cond: the U-Net with 8 inputs at D = 2560 and the soft prompts (2 x 8 x 2560), the report "
              f"sentences through the frozen language model: {record['lm']}. The paper's model is the same "
              "width with 34 layers in NF4: `namd check --preset paper` sizes it.",
              "- ddim / sample: `namd.inference.sampler.denoise` and `sample_latents` with the cond U-Net, random "
              "baseline latents and contexts (C is computed once per nodule in `namd sample`; not timed here).",
              "", "A step is the shared trainer's inner loop (loss under autocast for bf16, zero_grad, "
              "backward, clip_grad_norm_, AdamW.step): the 1st also creates AdamW's states, the 2nd is the "
              "steady one. Peak: " + ("torch.cuda.max_memory_allocated, reset once the networks are built." if
                                      a["device"] == "cuda" else
                                      "the child's resident high-water mark (VmHWM, reset once the networks "
                                      "are built, so loading transients are left out) minus its resident size "
                                      "before them (after the imports and a warm-up step); glibc's mmap threshold "
                                      f"fixed at {MMAP_THRESHOLD} B so that freed memory leaves the resident size."),
              "Estimate: `namd.sizing.estimate_stage` for the same config, batch and language model: weights + "
              "grads + AdamW + max(activations, optimiser temporaries), the activations counted on the meta "
              "device (`namd check` prints the same for any config).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16")
    parser.add_argument("--stages", default="vae,prior,cond,ddim", help="comma list of vae, prior, cond, ddim, sample")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", dest="batch_override", action="append", default=[], metavar="STAGE=N",
                        help="another batch size for one stage (default: the preset's; ddim 8)")
    parser.add_argument("--ddim-steps", type=int, default=3, help="DDIM steps timed for the per-step mean")
    parser.add_argument("--sample-nodules", type=int, default=450, help="the paper's test set: 450")
    parser.add_argument("--sample-k", type=int, default=20)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-precision", default=None, help="precision of the sampling run "
                        "(default: the last of --precisions)")
    parser.add_argument("--lm-dir", default=None, help="an existing Gemma-shaped folder (default: build one)")
    parser.add_argument("--label", default="", help="a line saying what is reduced, for dry runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(HERE / "results" / "paper_size"))
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="rewrite the Markdown of an earlier run's JSON record (no measuring)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--child-batch", dest="batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE))
    if args.render:
        from _results import publish

        publish(Path(args.render).with_suffix(""), json.loads(Path(args.render).read_text()), markdown)
        return
    import diffusers
    import transformers
    from _results import machine, publish, start_load

    load = start_load()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU only"
    lm = (f"Gemma-3-shaped: MedGemma 1.5 4B's text config with {LM_LAYERS} layers (D = 2560), "
          "random weights, word-level vocabulary, saved to a folder and loaded by "
          "LLMContextEncoder.from_config") if not args.lm_dir else f"text.model = {args.lm_dir}"

    def done(rows: list[dict]) -> dict:
        record = {"args": vars(args), "command": "python benchmarks/paper_size.py " + " ".join(sys.argv[1:]),
                  "label": args.label, "rows": rows, "device_name": device_name, "lm": lm,
                  "versions": {"transformers": transformers.__version__, "diffusers": diffusers.__version__,
                               "python": sys.version.split()[0]},
                  "machine": machine(load, threads=args.threads)}
        with contextlib.redirect_stdout(io.StringIO()):  # printed once, at the end
            publish(args.out, record, markdown)
        return record

    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, args.lm_dir or str(save_gemma_shaped(Path(tmp) / "gemma_shaped")), done)
    done(rows)
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
