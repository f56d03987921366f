"""Two CPU processes (torchrun, gloo) train the reference model for two steps and agree on the weights.

facts §8: `torchrun --nproc_per_node 2` gives real 2-process DDP on CPU here, whereas
`accelerate launch --cpu --num_processes 2` ran a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent('''
    import sys, json
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import Dataset
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_reference_adapter
    from stccl_diffusers.models.reference_dice import ReferenceDICE
    from stccl_diffusers.training import build_accelerator, config_from_dict, train

    out = sys.argv[1]
    with_stccl = len(sys.argv) > 2 and sys.argv[2] == "stccl"

    class Clips(Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)  # every clip differs, so unsynced ranks would diverge
            return {"frames": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
                    "reference": torch.rand(3, 16, 16, generator=g) * 2 - 1,
                    "audio": torch.randn(1280, generator=g) * 0.1, "emotion": torch.tensor(i % 8)}

    cfg = config_from_dict(DiceTrainingConfig, dict(
        output_dir=out, report_to="none", train_batch_size=1, max_train_steps=2, learning_rate=1e-2,
        checkpointing_steps=0, validation_steps=0, validate_at_start=False, rank=2, seed=0,
        num_frames=2, resolution=16, use_face_boxes=False, grad_balance_every=1,
        p_mean=-3.0 if with_stccl else 0.7, p_std=0.0 if with_stccl else 1.6, stccl_weight=1.0))
    accelerator = build_accelerator(cfg)
    torch.manual_seed(0)
    model = ReferenceDICE(resolution=16, num_frames=2)
    callback = None
    if with_stccl:  # every sample gated: the frozen anchor (LoRA off) and the balance's autograd.grad under DDP
        from stccl_diffusers import STCCLMetric
        from stccl_diffusers.adapters.dice import build_callback
        callback = build_callback(cfg, STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False),
                                  decoder=model.vae)
    adapter = build_reference_adapter(cfg, model, callback=callback)
    result = train(adapter, Clips(), cfg, accelerator=accelerator)
    weights = {n: p.detach().contiguous() for n, p in adapter.named_parameters() if p.requires_grad}
    save_file(weights, f"{out}/rank{accelerator.process_index}.safetensors")
    with open(f"{out}/rank{accelerator.process_index}.json", "w") as f:
        json.dump({"world": accelerator.num_processes, "steps": result.global_step,
                   "type": str(accelerator.distributed_type), "log": result.step_log}, f)
''')


def _run_two_processes(tmp_path, *args):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(worker), str(tmp_path), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_stccl_with_the_frozen_anchor_and_the_gradient_balance_keeps_ranks_in_sync(tmp_path):
    import json

    proc = _run_two_processes(tmp_path, "stccl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    log = json.loads((tmp_path / "rank0.json").read_text())["log"]
    assert [r["stccl_num_scored"] > 0 for r in log] == [True, True]
    assert all(r["grad_ratio"] > 0 and -1 <= r["grad_cos"] <= 1 for r in log)


def test_two_cpu_processes_end_with_identical_trainable_weights(tmp_path):
    import json

    proc = _run_two_processes(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world"] == 2 and i["steps"] == 2 for i in info), info
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # ... and training moved them: LoRA B starts at zero ("gaussian" init keeps B = 0).
    assert any(float(a[k].abs().sum()) > 0 for k in a if "lora_B" in k)
