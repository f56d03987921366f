"""The smallest set of shims that lets EAT's own stage-2 code run on a current stack.

EAT (github yuangan/EAT_code) was written for Python 3.7 / torch 1.11. Its training path, imported
unchanged from the user's checkout, needs exactly these six things on Python 3.10+ / torch 2.x /
numpy 2 / librosa 0.10+ / scikit-image 0.19+ (each is listed in ``docs/eat.md`` with why):

1. ``skimage.util.pad`` and ``skimage.draw.circle``: removed in scikit-image 0.19; EAT's data set
   pads with the first, its ``logger.py`` imports the second. -> ``np.pad``; ``disk((r, c), radius)``.
2. ``librosa.filters.mel(sr, n_fft, ...)``: keyword-only since librosa 0.10; EAT passes
   ``sr`` and ``n_fft`` positionally. -> a wrapper that maps them to keywords.
3. ``torchaudio``: EAT's data set imports it for ``torchaudio.transforms.MelSpectrogram`` only;
   torchaudio wheels are built against one torch release, so on a torch without a matching
   torchaudio the import fails. -> only when no working torchaudio imports: a stand-in module
   whose ``transforms.MelSpectrogram`` is built on ``torch.stft`` (HTK mel scale, no
   normalisation: torchaudio's defaults, the arguments EAT passes).
4. ``torchvision``: the same wheel/torch pairing problem (``import torchvision`` fails in its
   operator registration on a torch it was not built for). EAT's model module builds
   ``transforms.Compose/Resize/Normalize`` at import and uses ``models.vgg19`` (perceptual loss)
   and ``models.resnet`` (hopenet, weight 0 in stage 2). -> only when no working torchvision
   imports: a stand-in with those three transforms; its ``models`` raise, naming the fix
   (install the torchvision built for your torch, or set the perceptual weights to 0).
5. ``clip`` (EAT's CLIP fork, ``import clip`` at module load of ``modules/model_transformer.py``):
   its loss weight is 0 in the stage-2 config, so it is never called. -> only when ``clip`` does
   not import: a stub module whose ``load`` raises, naming the reason.
6. ``Tensor.get_device()``: EAT moves tensors with ``.to(x.get_device())``, which is ``.to(-1)``
   on the CPU and raises. -> ``get_device()`` returns the tensor's ``torch.device`` for CPU
   tensors (the CUDA index, as before, otherwise), which every ``.to``/``device=`` accepts.

:func:`apply_eat_compat` applies them once, and only the EAT backend calls it
(:func:`stccl_diffusers.adapters.eat.load_eat_generator_full`, ``load_eat_dataset``).
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import types

import torch

__all__ = ["apply_eat_compat", "applied_shims"]

_APPLIED: list[str] = []


def applied_shims() -> tuple[str, ...]:
    """Names of the shims applied so far in this process."""
    return tuple(_APPLIED)


def _pad_skimage() -> None:
    try:
        import skimage.util as su
    except ImportError:
        return
    if not hasattr(su, "pad"):
        import numpy as np

        su.pad = np.pad
        _APPLIED.append("skimage.util.pad")
    import skimage.draw as sd

    if not hasattr(sd, "circle"):  # EAT's logger.py: `from skimage.draw import circle` (removed in 0.19)
        sd.circle = lambda r, c, radius, shape=None: sd.disk((r, c), radius, shape=shape)
        _APPLIED.append("skimage.draw.circle")


def _positional_librosa_mel() -> None:
    try:
        import librosa.filters as lf
    except ImportError:
        return
    mel = lf.mel
    if getattr(mel, "_stccl_positional", False):
        return

    @functools.wraps(mel)
    def positional_mel(*args, **kwargs):
        names = ("sr", "n_fft", "n_mels", "fmin", "fmax")
        if len(args) > len(names):
            raise TypeError(f"librosa.filters.mel takes at most {len(names)} positional arguments, got {len(args)}")
        kwargs.update(zip(names, args))
        return mel(**kwargs)

    positional_mel._stccl_positional = True
    lf.mel = positional_mel
    _APPLIED.append("librosa.filters.mel positional")


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0) if not torch.is_tensor(f) else 2595.0 * torch.log10(1.0 + f / 700.0)


class _MelSpectrogram(torch.nn.Module):
    """torchaudio's ``MelSpectrogram`` defaults (power 2, HTK mel, no norm, centred reflect pad)."""

    def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None, f_min=0.0, f_max=None,
                 pad=0, n_mels=128, power=2.0, center=True, pad_mode="reflect", **unused):
        super().__init__()
        if unused:
            raise TypeError(f"the torchaudio stand-in's MelSpectrogram does not take {sorted(unused)}")
        self.n_fft, self.pad, self.power, self.center, self.pad_mode = n_fft, pad, power, center, pad_mode
        self.win_length = win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        f_max = float(f_max if f_max is not None else sample_rate / 2)
        freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
        m = torch.linspace(_hz_to_mel(float(f_min)), _hz_to_mel(f_max), n_mels + 2)
        f_pts = 700.0 * (10 ** (m / 2595.0) - 1.0)
        slopes = f_pts[None, :] - freqs[:, None]
        down = -slopes[:, :-2] / (f_pts[1:-1] - f_pts[:-2])
        up = slopes[:, 2:] / (f_pts[2:] - f_pts[1:-1])
        self.register_buffer("fb", torch.clamp(torch.minimum(down, up), min=0.0), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        x = waveform.reshape(-1, shape[-1])
        if self.pad:
            x = torch.nn.functional.pad(x, (self.pad, self.pad))
        spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length, self.window, center=self.center,
                          pad_mode=self.pad_mode, return_complex=True).abs().pow(self.power)
        mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
        return mel.reshape(*shape[:-1], *mel.shape[-2:])


def _usable(package: str, transform: str) -> bool:
    """True when `package` imports and has `transforms.<transform>`; otherwise the half-imported
    modules are forgotten so that a stand-in can take their place. A wheel built for another torch
    fails at import (OSError/RuntimeError/ImportError) or in its operator registration."""
    try:
        getattr(importlib.import_module(package).transforms, transform)
        return True
    except Exception:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        return False


def _torchaudio_stand_in() -> None:
    if _usable("torchaudio", "MelSpectrogram"):
        return
    ta = types.ModuleType("torchaudio")
    ta.__doc__ = "stccl-diffusers stand-in: only transforms.MelSpectrogram (what EAT uses)."
    ta.transforms = types.ModuleType("torchaudio.transforms")
    ta.transforms.MelSpectrogram = _MelSpectrogram
    sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = ta, ta.transforms
    _APPLIED.append("torchaudio stand-in (MelSpectrogram)")


class _Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class _Resize(torch.nn.Module):
    def __init__(self, size, antialias=True, **unused):
        super().__init__()
        self.size, self.antialias = (size, size) if isinstance(size, int) else tuple(size), antialias

    def forward(self, x):
        return torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                                               antialias=self.antialias)


class _Normalize(torch.nn.Module):
    def __init__(self, mean, std, inplace=False):
        super().__init__()
        self.mean, self.std = torch.as_tensor(mean).view(-1, 1, 1), torch.as_tensor(std).view(-1, 1, 1)

    def forward(self, x):
        return (x - self.mean.to(x)) / self.std.to(x)


def _no_torchvision_model(name):
    def build(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.models.{name}: no torchvision that works with torch {torch.__version__} is installed "
            "(stccl-diffusers put in a stand-in with transforms only). EAT needs it for the VGG19 perceptual loss "
            "(train_params.loss_weights.perceptual) and hopenet (headpose): install the torchvision built for "
            "your torch, or set those weights to 0")
    return build


def _resnet_attribute(name):
    # Dunders are AttributeError: `inspect.getmodule` (librosa's lazy loader runs it) probes every
    # module in sys.modules with hasattr(module, "__file__"), which only catches AttributeError.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return _no_torchvision_model(f"resnet.{name}")()


def _torchvision_stand_in() -> None:
    if _usable("torchvision", "Normalize"):
        return
    tv = types.ModuleType("torchvision")
    tv.__doc__ = "stccl-diffusers stand-in: transforms.{Compose, Resize, Normalize}; models raise on use."
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.Compose, tv.transforms.Resize, tv.transforms.Normalize = _Compose, _Resize, _Normalize
    tv.models = types.ModuleType("torchvision.models")
    tv.models.vgg19 = _no_torchvision_model("vgg19")
    tv.models.resnet = types.ModuleType("torchvision.models.resnet")
    tv.models.resnet.__getattr__ = _resnet_attribute
    for m in (tv, tv.transforms, tv.models, tv.models.resnet):
        sys.modules[m.__name__] = m
    _APPLIED.append("torchvision stand-in (transforms)")


def _clip_stub() -> None:
    try:
        importlib.import_module("clip")
        return
    except Exception:
        pass
    stub = types.ModuleType("clip")

    def load(*args, **kwargs):
        raise RuntimeError("EAT's CLIP fork is not installed (stccl-diffusers stubbed `clip`); it is used only "
                           "when train_params.loss_weights.clip != 0, which EAT's stage-2 config does not set")

    stub.load = load
    sys.modules["clip"] = stub
    _APPLIED.append("clip stub")


def _cpu_safe_get_device() -> None:
    original = torch.Tensor.get_device
    if getattr(original, "_stccl_cpu_safe", False):
        return

    def get_device(self):
        index = original(self)
        return self.device if index < 0 else index

    get_device._stccl_cpu_safe = True
    torch.Tensor.get_device = get_device
    _APPLIED.append("Tensor.get_device on CPU")


def apply_eat_compat() -> tuple[str, ...]:
    """Apply the shims (idempotent); returns the names of those applied in this process."""
    _pad_skimage()
    _positional_librosa_mel()
    _torchaudio_stand_in()
    _torchvision_stand_in()
    _clip_stub()
    _cpu_safe_get_device()
    return applied_shims()
