"""Speech emotion recognition on frozen SSL backbones: the MELT paper's evaluation system (§4.2, Table 3).

- `backbones`: Hugging Face speech SSL models (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) by name or local path,
  and `egemaps` (openSMILE functionals); each turns 16 kHz signals into per-layer mean-pooled hidden states.
- `cache`: the feature cache (per utterance and layer, keyed by audio content), resumable extraction.
- `heads`: the learned softmax-weighted sum of layers and the paper's Linear → ReLU → Dropout → Linear head.
- `training`: the training loop (any loss, targets as arrays), speaker-independent validation split.
- `model`: train / evaluate a classifier on a corpus table and a feature cache; model folders.
- `finetune`: backbone and head trained end to end (no cache).
- `experiment`: the Table 3 protocol over label sources × backbones × test corpora × seeds.
- Emotion distributions (Scaling Ambiguity): `losses` (jsd-entropy, soft-ce, kl), `frames` (layer-weighted frames
  cached for attention pooling), `dime` (DiME-Aug), `distribution_model` (soft-target training and scoring per
  ambiguity tertile), `distribution_experiment` (targets × DiME-Aug × seeds on speaker-independent folds).

torch and transformers (the `ser` extra) are imported by these modules, so nothing here is imported by
`melt --help`: the CLI imports them inside its commands.
"""
