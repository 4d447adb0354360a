"""What a metric that needs a pass before the main pass declares (variability's corpus mean ᾱ over the first N pieces).

A metric's `first_pass` is None or a `FirstPass`: a device part of its own that the engine reduces with the same code as
the main pass (pipeline/engine/first_pass.py: per-layer reduction, norm weighting, batch sums, merge), on batches cut
to the first `positions(attend_cfg)` pieces of every sentence (a causal model; an encoder's attention there depends on
the rest of the sentence, so it gets whole sentences), with padding rows left as the model gives them. Its sums are per
sentence like the main pass's and get no bootstrap replicates; the merged sums of all parts are finished by `result`
into the arrays the main pass reads as `layer.first_pass[name]`. (A module starting with `_`: the metric registry
skips it.)"""

from __future__ import annotations


class FirstPass:
    name: str = ""  # the metric's: first-pass sums are stored as <name>.<key> (norm.<name>.<key>)
    provides: tuple[str, ...] = ()  # its sum keys (without the <name>. prefix), like a DevicePart's
    norm_weighting: bool = True  # also reduced on norm-weighted attention (norm.<key>)
    wants_residuals: bool = False

    def positions(self, attend_cfg) -> int:
        """N > 0: the pass covers the first N pieces of every sentence; 0: no first pass."""
        return 0

    def pair_features(self, batch) -> dict:
        return {}

    def reduce_layer(self, layer) -> dict:
        """{key: [B, H, ...] per sentence} from one layer's attention (an engine LayerView of the truncated batch)."""
        return {}

    def batch_sums(self, batch) -> dict:
        """{key: [B, ...] per sentence} that do not depend on attention (pair counts)."""
        return {}

    def result(self, sums: dict) -> dict:
        """The merged sums of every part {key: array} → {array name: array} for the main pass."""
        return {}
