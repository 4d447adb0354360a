"""What the device part of a metric is: how its sums are reduced from a batch's attention, on the device, in the
batch. The attend stage imports only device parts (this package); what is made of the merged sums afterwards is
the metric's analysis part, pipeline/analysis/<name>.py, which the forward passes never depend on.

A device part names its sums: each key its hooks return is stored as `<name>.<key>` (the engine adds the prefix
and refuses a key the part does not declare), so no two metrics can write the same sum. `provides` lists its keys; `requires` the full keys of other
metrics its analysis part reads (e.g. "attention_mass.mass", the denominator of most shares). The registry
(pipeline/metrics/__init__.py) refuses two providers of a key and a required key that nobody provides.

Hooks (each optional; docs/design.md "Adding a metric" shows a whole metric in 30 lines):
  pair_features(batch)  {key: [B, T, T] weight w_ij}: the engine adds Σ α_ij w_ij per head for all metrics in one matmul
  reduce_layer(layer)   {key: [B, H, ...] per sentence} from one layer's attention (pipeline/engine LayerView)
  batch_sums(batch)     {key: [B, ...] per sentence} that do not depend on attention (pair counts)
  first_pass            a pass before the main pass over the first N pieces (variability's mean ᾱ)
  residual_rows / reduce_residuals   for a metric that reads the residual stream of the same forward pass
  disabled_reason(attend_cfg) / model_reason(adapter)   why the run's config or the loaded model cannot give it"""

from __future__ import annotations


class DevicePart:
    name: str = ""
    provides: tuple[str, ...] = ()  # its sum keys (without the `<name>.` prefix the engine adds)
    requires: tuple[str, ...] = ()  # other metrics' full sum keys its analysis reads
    norm_weighting: bool = (
        True  # also reduced on norm-weighted attention α_ij·‖f_h(x_j)‖ (sums norm.<key>)
    )
    wants_residuals: bool = (
        False  # reads the residual stream of the same forward pass (reduce_residuals)
    )
    first_pass = (
        None  # a FirstPass (pipeline/metrics/_first_pass.py) run before the main pass, or None
    )

    def disabled_reason(self, attend_cfg) -> str | None:
        """Why this metric cannot be computed under the run's attend config (variability with N = 0), or None: its
        columns are then NaN, its figures replaced by the reason, its claims not applicable."""
        return None

    def model_reason(self, adapter) -> str | None:
        """Why the loaded model cannot give this metric (the logit lens on a bidirectional model), or None."""
        return None

    def pair_features(self, batch) -> dict:
        """{sum key: [B, T, T] weight per pair}: the engine adds Σ α_ij·w_ij per head in one matmul for all metrics."""
        return {}

    def reduce_layer(self, layer) -> dict:
        """{sum key: [B, H, ...] tensor per sentence} from one layer's attention (an engine LayerView); the engine
        adds them over the batch, and gives a head-level sum ([B, H]) its bootstrap replicates. Under norm weighting
        the view holds α'_ij = α_ij n_j, whose rows do not sum to 1: a metric reads weights, never assumes they are
        probabilities (layer.null_row_share is the share of position 0 in a row under either weighting)."""
        return {}

    def batch_sums(self, batch) -> dict:
        """{sum key: [B, ...] tensor per sentence} that do not depend on attention (pair counts)."""
        return {}

    def residual_rows(self, batch):
        """wants_residuals: [B, T] bool, the pieces whose residual stream the engine keeps during the forward pass."""
        return None

    def reduce_residuals(self, batch, rows, residuals: list, adapter):
        """wants_residuals: after the forward pass, the residual stream of the pieces `rows` ([B, T] bool, from
        residual_rows) at every depth d = 0..L (0: the input of the first block, d ≥ 1: the output of block d), each
        [N, D] in the order of rows.nonzero() → a Sums of this batch (additive sums over the batch, and ranked
        candidates; neither gets bootstrap replicates)."""
        raise NotImplementedError
