"""`EATSTCCLConfig`: the fields of `train_eat_stccl.py` (its YAML keys and flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...training.config import TalkingClipsConfig, shape


@dataclass
class EATSTCCLConfig(TalkingClipsConfig):
    """`TalkingClipsConfig` (diffusers' argument names, clips, metric) plus what EAT needs."""

    # -- backend: the user's EAT checkout, or the built-in reference model -------------------
    eat_root: Optional[str] = None
    """EAT checkout (github yuangan/EAT_code); None trains the built-in reference model."""
    eat_checkpoint: Optional[str] = None
    """EAT stage-2 checkpoint, e.g. `deepprompt_eam3d_all_final_313.pth.tar`."""
    eat_config: Optional[str] = None
    """EAT's YAML, e.g. `config/deepprompt_eam3d_st_tanh_304_3090_all.yaml` (relative to eat_root)."""
    reference_model: Optional[str] = shape(None)
    """A `save_pretrained` ReferenceEATModel to start from; None starts from scratch."""
    reference_render_channels: int = shape(16)
    """Reference model: channels of its renderer (a model shape)."""
    motion_weight: float = 0.0
    """Reference model: extra L1 weight where a frame differs from its source (mouth, brows,
    eyes; `ReferenceEATModel.reconstruction_losses`). 0 is a plain L1."""
    train_mode: str = "full"
    """EAT trains modules in full (prompt, EAM, side-tuning); LoRA does not apply."""

    # -- STCCL (metric_path, metric_backbone, ...: TalkingClipsConfig) ------------------------
    stccl_weight: float = 1.0
    stccl_warmup_steps: int = 0
    """Optimizer steps without the STCCL term (no anchor render, no metric)."""
    stccl_ramp_steps: int = 0
    """Then a linear ramp of the weight over this many steps."""
    crop_size: int = 112
    """Face crops (from `bboxs`) fed to the metric; the metric resizes to its input_size."""
    face_boxes: str = "frame"
    """`bboxs` of `data=clips`: `frame` (the whole frame: clips are face crops) or `track` (per-frame
    boxes of a face track over each clip, `data.face_align.face_track`; faceless clips are skipped)."""

    # -- data ------------------------------------------------------------------------------
    data: str = "clips"
    """`clips` (a folder of labelled .mp4 clips with audio, MEAD layout; synthesized for the demo)
    or `eat` (EAT's own data set from `eat_config`)."""
    data_dir: str = "outputs/eat_demo_data"
    eat_mead_path: Optional[str] = None
    """`data: eat`: EAT's prepared MEAD (holding `images_evp_25/`, `latent_evp_25/`, `deepfeature32/`,
    `wav_16000/`, `bboxs/`, `poseimg/`, `voxselect/`). Sets `dataset_params.root_dir` to its
    `images_evp_25/` and EAT's module constants `mead_path`, `poseimg_path`, `vox_path` for this run;
    None keeps what the user's checkout and eat_config say (EAT's README way: edit them there)."""
    eat_poseimg_path: Optional[str] = None
    """Folder holding `poseimg/`, if not eat_mead_path (EAT keeps it on another disk)."""
    eat_vox_path: Optional[str] = None
    """Folder holding `voxselect/`, if not eat_mead_path."""
    resolution: int = 256
    num_frames: int = 5
    num_validation_clips: int = 2
    validation_frames: int = 25
    """Frames per validation clip (rendered num_frames at a time, one z_trg per clip)."""
