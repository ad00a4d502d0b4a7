#!/usr/bin/env python3
"""kiln-train's model parallelism, end to end: the same config (global batch 8, 2 micro-batches)
on 1 rank and under `mpirun -np 2` with each layout as a config entry (tensor parallel, with
sequence parallelism, with dropout, pipeline parallel with GPipe and 1F1B, context parallel,
expert parallel on an MoE model) must give the same loss at every step and the same validation
losses (1e-5 relative), and the same final parameters (1e-4 of the largest magnitude; the float
sums run in another order, which AdamW passes on).
The ZeRO-1 run (a group of one here) saves through the consolidation of optimizer shards.

Checkpoints are written in the layout of the whole model, so they move between layouts: the
pipeline-parallel run's checkpoint at step 4 resumes on 1 rank, the tensor-parallel one too, and
the 1-rank run's checkpoint resumes with 2 pipeline stages; each continues with the losses of
the run that never stopped.

kiln-generate reads a pipeline-parallel run's checkpoint as it reads any other.

  check_model_parallel.py --launch "mpirun -np 2 --oversubscribe" --train kiln-train
                          --prepare kiln-prepare --generate kiln-generate --work DIR
"""
import json
import subprocess
from pathlib import Path

from check_data_parallel import (arguments_and_work_dir, compare, compare_parameters, losses, prepare_corpus,
                                 read_safetensors, run, small_run)

STEPS = 8


def val_losses(run_dir):
    """The validation losses of a run (steps 4 and 8 here), which the layouts compute forward-only."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["val_loss"] for record in records if "val_loss" in record]
LAYOUTS = {
    "tp2": ["parallel.tensor_parallel=2"],
    "tp2_sequence_parallel": ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"],
    "pp2_gpipe": ["parallel.pipeline_parallel=2", "parallel.pipeline_schedule=gpipe"],
    "pp2_1f1b": ["parallel.pipeline_parallel=2"],
    "cp2": ["parallel.context_parallel=2"],
    "tp2_zero1": ["parallel.tensor_parallel=2", "parallel.zero_stage=1"],
}


def main():
    args, work = arguments_and_work_dir()
    launch = args.launch.split()

    prepare_corpus(work, args.prepare)
    config = {
        **small_run(work),
        "training": {"max_steps": STEPS, "batch_size": 8, "grad_accumulation": 2, "grad_clip": 1.0},
        "eval": {"interval": 4, "batches": 2, "samples": 0},
        "checkpoint": {"interval": 4, "keep_last": 5},
        "logging": {"interval": 1, "tensorboard": False},
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    middle = work / "{}" / "checkpoints" / "step_00000004"

    def train(out, *settings, ranks=2, resume=None, config_file=config_path):
        command = (launch if ranks == 2 else []) + [args.train, "--config", config_file, "--set", f"out_dir={out}"]
        for setting in settings:
            command += ["--set", setting]
        if resume:
            command += ["--resume", resume]
        return run(command)

    # A layout kiln-train does not support ends the whole job at once with a message naming it.
    refused = subprocess.run([str(c) for c in launch + [args.train, "--config", config_path, "--set",
                                                       f"out_dir={work / 'refused'}", "--set", "parallel.tensor_parallel=2",
                                                       "--set", "parallel.zero_stage=2"]],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0, refused.stdout
    assert "parallel.zero_stage 2 is not supported with tensor, pipeline, context or expert parallelism" in refused.stderr, \
        refused.stderr

    one = work / "run_1rank"
    train(one, ranks=1)
    single = losses(one)
    assert len(single) == STEPS and single[-1] < 0.9 * single[0], single
    params_one = read_safetensors(one / final)

    for name, settings in LAYOUTS.items():
        out = work / name
        printed = train(out, *settings)
        assert "2 rank(s) (tp " in printed, printed
        compare(f"{name} vs 1 rank", single, losses(out))
        compare(f"{name} vs 1 rank, validation", val_losses(one), val_losses(out))
        compare_parameters(params_one, read_safetensors(out / final))

    # Dropout: the tensor-parallel ranks draw the single process's masks from the same stream.
    dropout_one = work / "dropout_1rank"
    train(dropout_one, "model.dropout=0.1", ranks=1)
    dropout_tp = work / "dropout_tp2"
    train(dropout_tp, "model.dropout=0.1", *LAYOUTS["tp2"])
    compare("tp2 vs 1 rank, dropout 0.1", losses(dropout_one), losses(dropout_tp))
    compare_parameters(read_safetensors(dropout_one / final), read_safetensors(dropout_tp / final))

    # Expert parallelism: an MoE model, whose routing and auxiliary loss span both ranks' tokens.
    moe = ["model.moe.n_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=32"]
    moe_one = work / "moe_1rank"
    train(moe_one, *moe, ranks=1)
    moe_two = work / "moe_ep2"
    train(moe_two, *moe, "parallel.expert_parallel=2")
    compare("ep2 vs 1 rank (MoE)", losses(moe_one), losses(moe_two))
    compare_parameters(read_safetensors(moe_one / final), read_safetensors(moe_two / final))

    # Checkpoints across layouts: PP2 -> 1 rank, TP2 -> 1 rank, 1 rank -> PP2.
    for source, target, settings, ranks in (("pp2_1f1b", "pp2_to_1rank", [], 1),
                                            ("tp2", "tp2_to_1rank", [], 1),
                                            ("run_1rank", "1rank_to_pp2", LAYOUTS["pp2_1f1b"], 2)):
        out = work / target
        train(out, *settings, ranks=ranks, resume=str(middle).format(source))
        compare(f"{source} checkpoint at step 4 resumed as {target}", single[4:], losses(out))

    sample = run([args.generate, "--checkpoint", work / "pp2_1f1b", "--prompt", "the ", "--max-tokens", "40",
                  "--top-k", "5", "--seed", "3"])
    assert sample.startswith("the ") and len(sample) >= 40, sample
    print("ok")


if __name__ == "__main__":
    main()
