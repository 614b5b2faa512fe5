"""The distributional losses against hand-computed values and the metric functions, gradients through the
distributional head, and the frame store: equal to frames computed on the fly, and robust to a killed writer."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from melt.acoustics.audio import read_audio
from melt.ambiguity.metrics import jensen_shannon
from melt.ser.backbones import load_backbone
from melt.ser.cache import FeatureCache, extract_features, lookup
from melt.ser.frames import FrameStore, FrameViews
from melt.ser.heads import DistributionHead, build_head
from melt.ser.losses import (
    distribution_loss,
    jensen_shannon_nats,
    jsd_entropy,
    jsd_score,
    kl_divergence,
    soft_cross_entropy,
)


def test_jsd_entropy_loss_against_a_hand_computed_value():
    # P = (½, ½), Q = (1, 0): M = (¾, ¼)
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    target = torch.tensor([[1.0, 0.0]])
    kl_pm = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qm = math.log(1 / 0.75)
    jsd = 0.5 * (kl_pm + kl_qm)
    assert jsd == pytest.approx(0.2157615543388357)
    assert float(jensen_shannon_nats(logits, target)[0]) == pytest.approx(jsd, abs=1e-6)
    assert float(jsd_entropy(logits, target)) == pytest.approx(jsd + 0.08 * math.log(2), abs=1e-6)
    assert float(jsd_entropy(logits, target, 0.5)) == pytest.approx(jsd + 0.5 * math.log(2), abs=1e-6)
    assert float(distribution_loss("jsd-entropy", 0.0)(logits, target)) == pytest.approx(jsd, abs=1e-6)
    assert float(soft_cross_entropy(logits, target)) == pytest.approx(math.log(2), abs=1e-6)
    assert float(kl_divergence(logits, target)) == pytest.approx(math.log(2), abs=1e-6)
    # identical distributions: no divergence, KL 0, soft-ce = the target's entropy
    same = torch.tensor([[0.2, 0.3, 0.5]])
    assert float(jensen_shannon_nats(torch.log(same), same)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_divergence(torch.log(same), same)) == pytest.approx(0.0, abs=1e-6)
    entropy = -sum(p * math.log(p) for p in (0.2, 0.3, 0.5))
    assert float(soft_cross_entropy(torch.log(same), same)) == pytest.approx(entropy, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        distribution_loss("mse")


def test_torch_jsd_is_the_metric_in_nats():
    """The loss's JSD (natural log) is the metric's (base 2) times ln 2, zeros in the targets included."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 5))
    targets = rng.dirichlet(np.full(5, 0.4), 200)
    targets[rng.random((200, 5)) < 0.3] = 0.0
    targets[targets.sum(axis=1) == 0, 0] = 1.0
    targets /= targets.sum(axis=1, keepdims=True)
    predicted = torch.softmax(torch.tensor(logits), dim=1).numpy()
    nats = jensen_shannon_nats(torch.tensor(logits), torch.tensor(targets)).numpy()
    np.testing.assert_allclose(nats, jensen_shannon(predicted, targets) * math.log(2), rtol=1e-6, atol=1e-9)
    assert jsd_score(predicted, targets) == pytest.approx(-jensen_shannon(predicted, targets).mean())


def test_saturated_predictions_give_finite_losses_and_gradients():
    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.0]])
    for name in ("jsd-entropy", "soft-ce", "kl"):
        value = distribution_loss(name)(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all(), name
        logits.grad = None


@pytest.fixture(scope="module")
def wavlm(tiny_backbones):
    return load_backbone(tiny_backbones["wavlm"], device="cpu")


@pytest.fixture(scope="module")
def signals(graded_corpus) -> list[np.ndarray]:
    return [read_audio(p) for p in graded_corpus.table["audio"].iloc[:3]]


def test_gradients_reach_the_layer_weights_and_the_head(wavlm, signals):
    """On the backbone's per-layer hidden states [B, layers, T, D] the head mixes the layers itself: the loss's
    gradient reaches the layer weights, the attention pooling and every layer of the head."""
    torch.manual_seed(0)
    head = DistributionHead(wavlm.num_layers, wavlm.dim, 3, hidden=16)
    values, mask = wavlm.batch_inputs(signals)
    with torch.no_grad():
        states, frames = wavlm.hidden_states(values, mask)
    assert states.dim() == 4 and not frames.all()  # padded: the mask matters
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6]])
    jsd_entropy(head(states, frames), targets).backward()
    assert head.layer_weights.logits.grad is not None and head.layer_weights.logits.grad.abs().sum() > 0
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # the mean-pooled variant: gradients reach the layer weights through the cache's per-layer means
    pooled = DistributionHead(wavlm.num_layers, wavlm.dim, 3, pooling="mean", hidden=16)
    jsd_entropy(pooled(torch.from_numpy(wavlm.pooled(signals))), targets).backward()
    assert pooled.layer_weights.logits.grad.abs().sum() > 0
    rebuilt = build_head(head.config())
    assert isinstance(rebuilt, DistributionHead) and rebuilt.config() == head.config()


def test_cached_frames_equal_the_mixed_hidden_states(wavlm, graded_corpus, signals, tmp_path):
    """The frame store holds Σ_l w_l h_lt of the valid frames (float16), and the head on those frames with its
    weights fixed to w gives what it gives on the per-layer states."""
    cache = FeatureCache.create(tmp_path / "cache", wavlm)
    table = graded_corpus.table.iloc[:3]
    extract_features(table, wavlm, cache, progress=False)
    weights = np.array([0.5, 0.2, 0.3], dtype=np.float32)
    store = FrameStore.create(cache, weights)
    result = extract_features(table, wavlm, cache, frames=store, progress=False)
    assert result.computed == 3 and len(store) == 3
    digests = lookup(cache, table).digests
    torch.manual_seed(1)
    head = DistributionHead(wavlm.num_layers, wavlm.dim, 3, hidden=16).eval()
    head.fix_layer_weights(weights)
    for audio, digest in zip(signals, digests, strict=True):
        values, _ = wavlm.batch_inputs([audio])
        with torch.no_grad():
            states, _ = wavlm.hidden_states(values, None)
            direct = torch.einsum("l,bltd->btd", torch.from_numpy(weights), states)[0].numpy()
            cached = store.frames(digest)
            assert cached.dtype == np.float16 and cached.shape == direct.shape
            np.testing.assert_allclose(cached.astype(np.float32), direct, rtol=2e-3, atol=2e-3)
            on_the_fly = torch.softmax(head(states), dim=1)
            frames, mask = FrameViews(store, [digest]).batch(np.array([0]), None)
            from_cache = torch.softmax(head(frames, mask), dim=1)
        np.testing.assert_allclose(from_cache.numpy(), on_the_fly.numpy(), atol=2e-3)
    reopened = FrameStore(FeatureCache.open(tmp_path / "cache"), weights)
    assert len(reopened) == 3 and reopened.nbytes() == sum(len(store.frames(d)) * 32 * 2 for d in digests)
    # padding: a batch of several utterances gives each its own frames only
    frames, mask = FrameViews(store, digests).batch(np.arange(3), None)
    assert mask.sum(dim=1).tolist() == [store.length(d) for d in digests]


def test_frame_store_refuses_bad_weights_and_egemaps(wavlm, tmp_path):
    from melt.errors import MeltError

    cache = FeatureCache.create(tmp_path / "cache", wavlm)
    with pytest.raises(MeltError, match="layer weights must be 3"):
        FrameStore.create(cache, [0.5, 0.5])
    with pytest.raises(MeltError, match="sum to 1"):
        FrameStore.create(cache, [0.5, 0.5, 0.5])
    with pytest.raises(MeltError, match="non-negative"):
        FrameStore.create(cache, [1.5, -0.5, 0.0])
    egemaps = FeatureCache.create(tmp_path / "egemaps", load_backbone("egemaps"))
    with pytest.raises(MeltError, match="eGeMAPS functionals have none"):
        FrameStore.create(egemaps, [1.0])


def test_a_killed_frame_extraction_keeps_finished_shards_and_resumes(tiny_backbones, graded_corpus, tmp_path):
    """SIGKILL (no cleanup at all) in the middle of writing frames: the store opens with the shards whose index
    was written, ignores anything half-written, and a rerun computes only the rest, each utterance once."""
    weights = [0.2, 0.3, 0.5]
    script = textwrap.dedent(
        f"""
        import pandas as pd, torch
        torch.set_num_threads(1)
        from melt.ser.backbones import load_backbone
        from melt.ser.cache import FeatureCache, extract_features
        from melt.ser.frames import FrameStore
        backbone = load_backbone({str(tiny_backbones["hubert"])!r}, device="cpu")
        cache = FeatureCache.create({str(tmp_path / "cache")!r}, backbone)
        store = FrameStore.create(cache, {weights!r})
        table = pd.read_parquet({str(graded_corpus.table_path)!r})
        extract_features(table, backbone, cache, frames=store, files_per_shard=2, progress=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((tmp_path / "cache").glob("frames-*.index.npz"))) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"finished before it could be killed: {process.communicate()[1]}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    backbone = load_backbone(tiny_backbones["hubert"], device="cpu")
    cache = FeatureCache.open(tmp_path / "cache")
    store = FrameStore(cache, weights)
    table = graded_corpus.table
    kept = len(store)
    assert 0 < kept < len(table)
    indexes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("frames-*.index.npz")}
    result = extract_features(table, backbone, cache, frames=store, files_per_shard=16, progress=False)
    assert result.computed == len(table) - kept
    assert {p: p.stat().st_mtime_ns for p in indexes} == indexes
    again = FrameStore(FeatureCache.open(tmp_path / "cache"), weights)
    keys = [str(k) for p in (tmp_path / "cache").glob("frames-*.index.npz") for k in np.load(p)["keys"]]
    assert len(keys) == len(set(keys)) == len(table) == len(again)
    # what survived the kill is what a clean extraction gives
    fresh = FrameStore.create(FeatureCache.create(tmp_path / "fresh", backbone), weights)
    extract_features(table.iloc[:4], backbone, fresh.cache, frames=fresh, progress=False)
    for digest in lookup(fresh.cache, table.iloc[:4]).digests:
        # (batches of other sizes: padding is masked exactly, up to float16 rounding)
        np.testing.assert_allclose(
            again.frames(digest).astype(np.float32),
            fresh.frames(digest).astype(np.float32),
            rtol=1e-2,
            atol=1e-3,
        )
