"""One owner for every sum: each metric's device part names its sums `<metric>.<key>` and declares them
(`provides`), a sum another metric's analysis reads is declared there (`requires`), and the registries refuse a
duplicate, a missing provider, an undeclared sum and a metric without its other half (pipeline/metrics/__init__.py,
pipeline/analysis/__init__.py, pipeline/engine: collect)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.analysis import analyses
from pipeline.errors import PipelineError
from pipeline.metrics import by_name, check_keys, registry
from pipeline.metrics.base import DevicePart

ROOT = Path(__file__).resolve().parent.parent


def part(name: str, provides=(), requires=()) -> DevicePart:
    made = DevicePart()
    made.name, made.provides, made.requires = name, tuple(provides), tuple(requires)
    return made


def test_the_registry_refuses_a_second_owner_and_a_missing_provider():
    check_keys(
        [part("a", ["x"]), part("b", ["x"], ["a.x"])]
    )  # the same short key under two names: two sums
    with pytest.raises(PipelineError, match=r"two metrics share the name\(s\) \['a'\]"):
        check_keys([part("a", ["x"]), part("a", ["y"])])
    with pytest.raises(PipelineError, match=r"sum 'a.x' is provided twice"):
        check_keys([part("a", ["x", "x"])])
    with pytest.raises(
        PipelineError, match=r"metric b requires sum\(s\) \['a.y'\], which no metric provides"
    ):
        check_keys([part("a", ["x"]), part("b", ["z"], ["a.y"])])


def test_every_metric_has_both_parts_and_the_registry_passes():
    assert sorted(by_name()) == sorted(a.name for a in analyses())
    check_keys(registry())


def test_an_analysis_reads_only_its_own_sums_and_those_it_requires():
    """Every full sum key written in an analysis module (`"<metric>.<key>"`) is its own metric's or declared in
    `requires`, and exists: provided by that metric."""
    owners = {f"{m.name}.{k}": m.name for m in registry() for k in m.provides}
    names = "|".join(sorted(by_name()))
    for analysis in analyses():
        source = (ROOT / "pipeline" / "analysis" / f"{analysis.name}.py").read_text()
        read = set(re.findall(rf'"((?:{names})\.[a-z_]+)"', source))
        device = by_name()[analysis.name]
        for key in read:
            assert key in owners, f"{analysis.name} reads {key!r}, which no metric provides"
            assert owners[key] == analysis.name or key in device.requires, (
                f"{analysis.name} reads {key!r} of {owners[key]} without declaring it in requires"
            )


def test_the_engine_refuses_a_sum_the_metric_does_not_declare():
    from pipeline.engine.reduction import collect

    entropy = by_name()["entropy"]
    assert set(collect(entropy, {"entropy_sum": np.zeros(1)})) == {"entropy.entropy_sum"}
    with pytest.raises(PipelineError, match="entropy returned a sum 'mass' it does not declare"):
        collect(entropy, {"mass": np.zeros(1)})


@pytest.mark.slow
def test_a_run_holds_exactly_the_declared_sums(full_run):
    """Every sum in the attend parts is a declared `<metric>.<key>` (or its norm-weighted or bootstrap replicate),
    and every declared sum of a computed metric is there."""
    from pipeline.run.io import read_npz
    from pipeline.run.parts import part_paths, read_meta
    from pipeline.sums import BOOT_PREFIX, NORM_PREFIX, Sums

    cfg = full_run
    arrays = read_npz(part_paths(cfg.run_dir / "attend")[0])
    sums = Sums.from_arrays(arrays)
    declared = {f"{m.name}.{k}" for m in registry() for k in m.provides}
    plain = {k.removeprefix(BOOT_PREFIX).removeprefix(NORM_PREFIX) for k in sums.additive}
    assert plain <= declared, sorted(plain - declared)
    status = read_meta(cfg.run_dir / "attend")["metrics"]
    dynamic = {
        "positional.positional_offset_right"
    }  # an encoder's second direction; this run is a decoder's
    computed = {
        f"{m.name}.{k}" for m in registry() if status.get(m.name) == "enabled" for k in m.provides
    }
    assert computed - dynamic <= plain, sorted(computed - dynamic - plain)


def test_the_documented_example_metric_owns_its_sums():
    """docs/design.md's worked example ("Adding a metric"), executed here: its device part joins the registry's
    check, and its analysis part forms its column from the sums it declares."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_architecture import toy_metric_files

    files = toy_metric_files()
    device, analysis = {}, {}
    exec(files["pipeline/metrics/previous_piece.py"], device)
    exec(files["pipeline/analysis/previous_piece.py"], analysis)
    check_keys([*registry(), device["METRIC"]])
    sums = {
        "previous_piece.previous_piece": np.array([[1.0, 0.0]]),
        "attention_mass.mass": np.array([[4.0, 2.0]]),
    }
    share = analysis["ANALYSIS"].ratios(sums.__getitem__)["previous_piece_share"]
    assert share.tolist() == [[0.25, 0.0]]
