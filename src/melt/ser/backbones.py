"""Backbones: 16 kHz signals in, one mean-pooled vector per layer out.

`load_backbone(name)` gives a Hugging Face speech SSL model (wav2vec 2.0, HuBERT, WavLM, data2vec-audio, ...)
loaded with `AutoModel` / `AutoFeatureExtractor` from a local folder or a hub name, or `egemaps`, the 88
openSMILE eGeMAPSv02 functionals as a single "layer". `Backbone.pooled(signals)` returns an array
[utterances, layers, dim]: for an SSL model, every hidden state (the CNN/embedding output and each transformer
layer) averaged over the utterance's valid frames.

Padding. Models whose CNN feature encoder uses layer norm (`feat_extract_norm="layer"`: WavLM, wav2vec2-large)
take an attention mask, and a padded utterance's valid frames equal the unpadded ones, so utterances of
different lengths share a batch. Models with group norm (`feat_extract_norm="group"`: wav2vec2-base,
HuBERT-base) normalise each CNN channel over the whole input, padding included, and data2vec-audio's stacked
positional convolutions carry the padding into the last frames, so for them padding changes the result
whatever the mask: they run only same-length signals together. Which case a model is in is tried when it is
loaded (`HuggingFaceBackbone._padding_is_exact`). Valid frames come from the model's own
`_get_feat_extract_output_lengths`, so the pooled vector of a padded utterance is the unpadded one's.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from melt.acoustics.audio import SAMPLE_RATE
from melt.errors import MeltError

EGEMAPS = "egemaps"
#: Longer signals are pooled over windows of at most this length (see `HuggingFaceBackbone.pooled`).
MAX_SECONDS = 60

#: The paper's four backbones (MELT §4.2.1), all loadable by these names where the hub is reachable.
PAPER_BACKBONES: dict[str, str] = {
    "wav2vec 2.0 Base": "facebook/wav2vec2-base-960h",
    "wav2vec 2.0 Aud": "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim",
    "Hubert Base": "facebook/hubert-base-ls960",
    "WavLM Base+": "microsoft/wavlm-base-plus",
}


class Backbone:
    """What the feature cache and the models need of a backbone."""

    #: as the user gave it (hub name, path or "egemaps")
    name: str
    #: identity of the weights: a hub commit, the SHA-256 of local weight files, or the openSMILE version
    fingerprint: str
    #: pooled vectors per utterance (SSL: hidden states including the CNN/embedding output)
    num_layers: int
    dim: int
    #: the head standardises the inputs on the training data (eGeMAPS functionals have wildly different scales)
    standardise: bool = False
    #: minimum number of samples a signal needs to give at least one frame
    min_samples: int = 1

    def pooled(self, signals: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def description(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "fingerprint": self.fingerprint,
            "num_layers": self.num_layers,
            "dim": self.dim,
            "standardise": self.standardise,
        }

    def can_pad(self) -> bool:
        """Whether signals of different lengths may share a batch (padding masked exactly)."""
        return True


class EgemapsBackbone(Backbone):
    """openSMILE eGeMAPSv02 functionals: a fast classical baseline, one 'layer' of 88 values."""

    standardise = True

    def __init__(self) -> None:
        import opensmile

        from melt.acoustics.features import feature_names

        self.name = EGEMAPS
        self.fingerprint = f"opensmile {opensmile.__version__} eGeMAPSv02 functionals"
        self.num_layers = 1
        self.dim = len(feature_names())
        # openSMILE needs a few frames (60 ms windows); shorter signals give NaN functionals
        self.min_samples = SAMPLE_RATE // 10

    def pooled(self, signals: list[np.ndarray]) -> np.ndarray:
        from melt.acoustics.features import process_signal

        return np.stack([process_signal(s)[None, :] for s in signals]).astype(np.float32)


class HuggingFaceBackbone(Backbone):
    """A transformers speech SSL model with its feature extractor, frozen, in eval mode."""

    def __init__(self, name: str, *, device: str = "auto", model=None, feature_extractor=None) -> None:
        import torch

        self.name = str(name)
        self.device = resolve_device(device)
        if model is None:
            model, feature_extractor, self.fingerprint = _load_pretrained(self.name)
        else:
            self.fingerprint = _local_fingerprint(Path(name)) if Path(name).is_dir() else self.name
        self.model = model.to(self.device).eval()
        self.feature_extractor = feature_extractor
        config = model.config
        self.num_layers = int(config.num_hidden_layers) + 1
        self.dim = int(config.hidden_size)
        self.min_samples = _min_samples(model)
        self._torch = torch
        self._can_pad = self._padding_is_exact()

    def can_pad(self) -> bool:
        return self._can_pad

    def _padding_is_exact(self) -> bool:
        """Whether a padded, masked utterance gives the vector it gets alone: tried on two seeded noise signals
        (1 s padded to 1.5 s). Not so for group-norm CNNs (wav2vec2-base, HuBERT-base: the norm spans the
        padding) nor for data2vec-audio (its stacked positional convolutions carry the padding into the last
        frames), whatever the mask; such models only batch equal lengths."""
        torch = self._torch
        rng = np.random.default_rng(0)
        short = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
        long = (0.1 * rng.standard_normal(SAMPLE_RATE * 3 // 2)).astype(np.float32)
        with torch.inference_mode():
            values, mask = self._padded([short, long])
            together = masked_mean(*self.hidden_states(values, mask))[0]
            values, _ = self._padded([short])
            alone = masked_mean(*self.hidden_states(values, None))[0]
        return bool(torch.allclose(together, alone, rtol=1e-3, atol=1e-4))

    def description(self) -> dict[str, Any]:
        return {
            **super().description(),
            "model_type": self.model.config.model_type,
            "feat_extract_norm": getattr(self.model.config, "feat_extract_norm", "layer"),
            "padding": "masked, exact" if self.can_pad() else "inexact: only equal lengths share a batch",
            "do_normalize": bool(getattr(self.feature_extractor, "do_normalize", False)),
        }

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        """The model's input values for one unpadded signal (the feature extractor's normalisation)."""
        values = self.feature_extractor(signal, sampling_rate=SAMPLE_RATE, return_tensors="np")[
            "input_values"
        ]
        return np.asarray(values[0], dtype=np.float32)

    def batch_inputs(self, signals: list[np.ndarray]):
        """(input_values [B, samples], sample mask [B, samples] or None) on the device, zero-padded."""
        if len({len(s) for s in signals}) > 1 and not self.can_pad():
            raise ValueError(f"{self.name} pools padded signals inexactly: batch equal lengths only")
        return self._padded(signals)

    def _padded(self, signals: list[np.ndarray]):
        torch = self._torch
        prepared = [self.prepare(s) for s in signals]
        lengths = [len(p) for p in prepared]
        longest = max(lengths)
        values = torch.zeros(len(prepared), longest)
        for i, p in enumerate(prepared):
            values[i, : len(p)] = torch.from_numpy(p)
        if min(lengths) == longest:
            return values.to(self.device), None
        mask = torch.zeros(len(prepared), longest, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        return values.to(self.device), mask.to(self.device)

    def frame_mask(self, sample_lengths, frames: int):
        """[B, frames] bool: the frames computed from valid samples only."""
        torch = self._torch
        lengths = self._output_lengths(sample_lengths)
        return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]

    def _output_lengths(self, sample_lengths):
        torch = self._torch
        lengths = torch.as_tensor(sample_lengths, dtype=torch.long, device=self.device)
        try:
            # the hidden states are the encoder's, before any adapter
            return self.model._get_feat_extract_output_lengths(lengths, add_adapter=False)
        except TypeError:  # HuBERT's version has no add_adapter argument (and no adapter)
            return self.model._get_feat_extract_output_lengths(lengths)

    def hidden_states(self, values, mask):
        """Stacked hidden states [B, layers, frames, dim] and the valid-frame mask [B, frames]."""
        torch = self._torch
        with warnings.catch_warnings():
            # torch warns about mask dtypes inside transformers' attention; nothing to act on
            warnings.simplefilter("ignore", UserWarning)
            output = self.model(values, attention_mask=mask, output_hidden_states=True)
        states = torch.stack(output.hidden_states, dim=1)
        sample_lengths = (
            mask.sum(dim=1) if mask is not None else torch.full((values.shape[0],), values.shape[1])
        )
        return states, self.frame_mask(sample_lengths, states.shape[2])

    def pooled(self, signals: list[np.ndarray]) -> np.ndarray:
        # A signal longer than MAX_SECONDS runs as near-equal windows, one forward pass each, and its vector is
        # the frame-weighted mean of theirs: attention memory grows with the square of the length.
        limit = MAX_SECONDS * SAMPLE_RATE
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        long: list[int] = []
        for i, s in enumerate(signals):
            if len(s) <= limit:
                pieces.append(s)
                owner.append(i)
            else:
                long.append(i)
        out = np.empty((len(signals), self.num_layers, self.dim), dtype=np.float32)
        if pieces:
            out[owner] = self._pooled_batch(pieces)[0]
        for i in long:
            windows = np.array_split(signals[i], -(-len(signals[i]) // limit))
            means, frames = zip(*(self._pooled_batch([w]) for w in windows), strict=True)
            weights = np.concatenate(frames).astype(np.float64)
            out[i] = np.tensordot(weights / weights.sum(), np.concatenate(means), axes=1)
        return out

    def mixed_frames(self, signals: list[np.ndarray], weights: np.ndarray) -> list[np.ndarray]:
        """Per signal, the valid frames of the layer-weighted sum of its hidden states, [frames, dim] float32
        (the input of attention pooling, see `melt.ser.frames`). A signal longer than MAX_SECONDS runs as
        near-equal windows whose frames are concatenated."""
        torch = self._torch
        mix = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=self.device)
        limit = MAX_SECONDS * SAMPLE_RATE
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for i, s in enumerate(signals):
            windows = [s] if len(s) <= limit else np.array_split(s, -(-len(s) // limit))
            pieces += windows
            owner += [i] * len(windows)
        frames_of: list[np.ndarray | None] = [None] * len(pieces)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(pieces):
            groups.setdefault(0 if self.can_pad() else len(s), []).append(i)
        with torch.inference_mode():
            for members in groups.values():
                values, mask = self.batch_inputs([pieces[i] for i in members])
                states, valid = self.hidden_states(values, mask)
                mixed = torch.einsum("l,bltd->btd", mix, states.float())
                lengths = valid.sum(dim=1).tolist()
                for row, i in enumerate(members):
                    frames_of[i] = mixed[row, : int(lengths[row])].cpu().numpy()
        out: list[list[np.ndarray]] = [[] for _ in signals]
        for i, frames in zip(owner, frames_of, strict=True):
            out[i].append(frames)
        return [np.concatenate(parts) for parts in out]

    def _pooled_batch(self, signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(pooled [B, layers, dim], valid frames [B]); without exact padding only equal lengths share a pass."""
        out = np.empty((len(signals), self.num_layers, self.dim), dtype=np.float32)
        counts = np.empty(len(signals), dtype=np.int64)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(signals):
            groups.setdefault(0 if self.can_pad() else len(s), []).append(i)
        with self._torch.inference_mode():
            for members in groups.values():
                values, mask = self.batch_inputs([signals[i] for i in members])
                states, frames = self.hidden_states(values, mask)
                out[members] = masked_mean(states, frames).float().cpu().numpy()
                counts[members] = frames.sum(dim=1).cpu().numpy()
        return out, counts


def masked_mean(states, frame_mask):
    """[B, layers, frames, dim] averaged over the valid frames of each item -> [B, layers, dim]."""
    weights = frame_mask.to(states.dtype)[:, None, :, None]
    return (states * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1)


def _min_samples(model) -> int:
    import torch

    length = 1
    while length < SAMPLE_RATE:
        frames = model._get_feat_extract_output_lengths(torch.tensor([length]))
        if int(frames[0]) >= 1:
            return length
        length += 40
    return SAMPLE_RATE


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MeltError("--device cuda: torch sees no CUDA GPU on this machine (use --device cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise MeltError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return device


def load_backbone(name: str | Path, *, device: str = "auto") -> Backbone:
    """`egemaps`, a local folder saved with `save_pretrained`, or a Hugging Face hub name."""
    name = str(name)
    if name.strip().lower() == EGEMAPS:
        return EgemapsBackbone()
    return HuggingFaceBackbone(name, device=device)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _load_pretrained(name: str):
    """(model, feature extractor, fingerprint) of a local folder or a hub name, with one clear error when it
    cannot be had: no traceback, no half-minute of retries against an unreachable hub."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

    _quiet_transformers()
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise MeltError(
            f"backbone {name!r}: no such model folder (a local path must be a folder saved with "
            "save_pretrained, holding config.json and the weights)"
        )
    source = str(path) if local else name
    options: dict[str, Any] = {}
    if not local:
        options = _hub_options(name)
    try:
        config = AutoConfig.from_pretrained(source, **options)
        # the weighted sum needs every layer; layerdrop would skip some at random when fine-tuning
        config.layerdrop = 0.0
        model = AutoModel.from_pretrained(source, config=config, **options)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MeltError(
            f"backbone {name!r} cannot be loaded ({reason[:200]}); give a local folder saved with "
            "save_pretrained, or a hub name with the hub reachable"
        ) from exc
    if getattr(model, "main_input_name", None) != "input_values" or not hasattr(
        model, "_get_feat_extract_output_lengths"
    ):
        raise MeltError(
            f"backbone {name!r} is a {type(model).__name__}, not a speech SSL model taking raw audio "
            "(wav2vec 2.0, HuBERT, WavLM, data2vec-audio, ...)"
        )
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, **options)
    except (OSError, ValueError, KeyError):
        # some checkpoints ship no preprocessor_config.json: wav2vec2's defaults (per-utterance normalisation)
        extractor = Wav2Vec2FeatureExtractor(do_normalize=True)
    if local:
        fingerprint = _local_fingerprint(path)
    else:
        fingerprint = f"{name}@{getattr(config, '_commit_hash', None) or 'unknown revision'}"
    return model, extractor, fingerprint


def _hub_options(name: str) -> dict[str, Any]:
    """Load from the local Hugging Face cache when the model is there; otherwise check in two seconds that the
    hub answers at all, so an offline machine gets the error at once."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str) and os.path.exists(cached):
        return {"local_files_only": True}
    if constants.HF_HUB_OFFLINE:
        raise MeltError(
            f"backbone {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; give a local "
            "folder saved with save_pretrained, or unset HF_HUB_OFFLINE where the hub is reachable"
        )
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=2.0):
            pass
    except OSError as exc:
        raise MeltError(
            f"backbone {name!r} is neither a local folder nor in the Hugging Face cache, and the hub "
            f"({endpoint.hostname}) is unreachable ({exc.strerror or exc}); give a local folder saved with "
            "save_pretrained, or run where the hub is reachable"
        ) from exc
    return {}


def _local_fingerprint(path: Path) -> str:
    """SHA-256 over config.json and the weight files: retrained weights in the same folder get a new identity."""
    digest = hashlib.sha256()
    names = sorted(
        p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".pt")
    )
    for file in names:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"
