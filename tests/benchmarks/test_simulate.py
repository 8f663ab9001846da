"""The simulator of benchmarks/simulate.py on a made-up table of the shipped benchmark grid."""

from __future__ import annotations

import math

import pytest

from tests.helpers import REPO, benchmark_module

GRID = REPO / "benchmarks" / "tables" / "cifar_resnet_grid.toml"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    record, simulate = benchmark_module("record_table"), benchmark_module("simulate")
    out = tmp_path_factory.mktemp("table") / "table.json"
    assert record.main([str(GRID), "--synthetic", "--out", str(out)]) == 0
    table = simulate.load_table(out)
    return simulate, table, simulate.table_spec(table, out)


def test_grid_points_enumerate_each_family_with_its_own_knobs():
    record = benchmark_module("record_table")
    from kdsearch.spec import load_study

    points = record.grid_points(load_study(str(GRID)))
    assert len(points) == 120  # 12 resnets + 8 mobilenets, x 3 temperatures x 2 alphas
    assert len({tuple(sorted(p.items())) for p in points}) == 120
    for p in points:
        other = "mobilenet" if p["family"] == "resnet" else "resnet"
        assert not any(k.startswith(other + ".") for k in p)


@pytest.mark.parametrize("method", ["kdsearch", "kdsearch-before", "random", "moasha",
                                    "nsga2+plan", "morea+plan"])
def test_replay_asks_only_table_points_and_keeps_the_budget(sim, method):
    if method.startswith(("moasha", "morea")):
        pytest.importorskip("syne_tune", reason="Syne Tune is the bench extra: pip install .[bench]")
    simulate, table, spec = sim
    budget = 3 * table.mean_trial_seconds()
    run = simulate.Run(method, 7, budget, 2)
    simulate.replay(simulate.make_method(method, spec, table, 7), table, budget, 2, run)
    index = table.index()
    assert run.finished, "no trial ended within three mean trial times on two workers"
    for f in run.finished:
        row = index[simulate.point_key(f.params)]
        assert f.seconds <= budget
        assert f.val == row.val[f.epochs - 1] and f.n_params == row.n_params
        # a trial's end is at least the sum of its epochs' recorded seconds
        assert f.seconds >= sum(row.seconds[: f.epochs]) - 1e-9
        assert f.complete == (f.epochs == table.epochs)


def test_kdsearch_asks_its_start_up_at_the_centre_of_t_and_alpha_and_drawn_does_not(sim):
    simulate, table, spec = sim
    drawn, centred = ([m.ask()[1] for _ in range(3)] for m in (
        simulate.make_method(name, spec, table, 7) for name in ("kdsearch-drawn", "kdsearch")))
    knobs = ("temperature", "alpha")
    for mine in centred:
        assert (mine["temperature"], mine["alpha"]) == (4.0, 0.5)  # of {2, 4, 8} and {.5, .9}
    # centred before the spread: on this grid a drawn plan's shapes may repeat (at two
    # recipes), the centred plan's never do, so its shapes need not follow the drawn ones
    shapes = [tuple(sorted((k, v) for k, v in p.items() if k not in knobs)) for p in centred]
    assert len(set(shapes)) == len(shapes)
    assert len({(p["temperature"], p["alpha"]) for p in drawn}) > 1


def test_kdsearch_stops_only_at_rungs_a_study_names_and_peers_never(sim):
    """Under this grid's one-cycle recipe kdsearch as shipped judges no rung; as shipped
    before (`kdsearch-rung-6-repeats`: one rung after epoch 6) it stopped trials."""
    simulate, table, spec = sim
    budget = 12 * table.mean_trial_seconds()
    runs = simulate.simulate([table], spec, ["kdsearch", "kdsearch-rung-6-repeats", "random"],
                             [3], budget, 4, progress=lambda s: None)
    ours, before, random_ = runs
    assert all(f.complete for f in ours.finished)
    assert any(not f.complete for f in before.finished)
    assert all(f.complete for f in random_.finished)


def test_kdsearch_ends_a_repeated_point_as_the_engine_does_and_trains_it_when_asked_to(sim):
    simulate, table, spec = sim
    budget = simulate.budget_seconds([table], 30, 2)
    methods = {}

    def make(name, spec, table, seed):
        methods[name] = simulate.make_method(name, spec, table, seed)
        return methods[name]

    simulate.simulate([table], spec, ["kdsearch", "kdsearch-repeats"], [0], budget, 2,
                      progress=lambda line: None, make=make)
    skipped = [t for t in methods["kdsearch"].study.get_trials(deepcopy=False)
               if t.state.name == "PRUNED"]
    assert skipped  # TPE did propose points it had trained, on this table and seed
    for t in skipped:
        twin = methods["kdsearch"].study.trials[t.user_attrs["repeat_of"]]
        assert twin.params == t.params and twin.number < t.number
        assert twin.state.name == "COMPLETE"
    trained = methods["kdsearch-repeats"].study.get_trials(deepcopy=False)
    assert all(t.state.name != "PRUNED" for t in trained)
    assert len({simulate.point_key(t.params) for t in trained}) < len(trained)  # repeats trained


def test_panel_hypervolume_bounds_and_the_table_front_is_the_best(sim):
    simulate, table, spec = sim
    panel = simulate.Panel.of(table)
    assert panel.hv([]) == 0.0
    # one perfect student at the small end of the box fills it
    assert panel.hv([(panel.low / 10, 1.0)]) == pytest.approx(1.0)
    # a student over the box's size limit counts for nothing
    assert panel.hv([(panel.high * 1.01, 0.99)]) == 0.0
    whole = panel.hv((r.n_params, r.val[-1]) for r in table.rows)
    part = panel.hv((r.n_params, r.val[-1]) for r in table.rows[::3])
    assert 0 < part <= whole < 1
    # the table's own scores bound every run's hypervolumes (the report's headroom line)
    top = simulate.table_best(table, panel)
    assert top["hv_log"] == pytest.approx(whole)
    run = simulate.Run("random", 5, 3 * table.mean_trial_seconds(), 2)
    simulate.replay(simulate.make_method("random", spec, table, 5), table, run.budget, 2, run)
    final = simulate.final_metrics(run, panel, whole)
    assert final["hv_log"] <= top["hv_log"] and final["hv_linear"] <= top["hv_linear"]
    assert final["hv_linear"] > 0


def test_paired_ratio_interval_and_the_closing_line(sim):
    simulate, table, spec = sim
    mean, low, high = simulate.paired_ratio([2.0, 2.2, 1.8], [1.0, 1.0, 1.0], higher=True)
    assert mean == pytest.approx(2.0) and low < 2.0 < high
    mean, _, _ = simulate.paired_ratio([5.0], [10.0], higher=False)  # time: lower is better
    assert mean == pytest.approx(2.0)
    budget = 6 * table.mean_trial_seconds()
    runs = simulate.simulate([table], spec, ["kdsearch", "random", "nsga2"], [1, 2], budget, 2,
                             progress=lambda s: None)
    lines: list[str] = []
    summary = simulate.report(runs, [table], out=lines.append)
    assert lines[-1].startswith("worst_metric=")
    assert sum(line.startswith("near-best students trained") for line in lines) == 1
    name = lines[-1].split()[0].split("=")[1]
    assert name in simulate.METRICS
    assert not math.isnan(summary["ratios"]["hv_log"]["ratio"])
    # no method's front dominates more than the whole table's: the ceiling bounds the ratio
    for metric in ("hv_log", "hv_linear"):
        ratios = summary["ratios"][metric]
        assert ratios["ceiling"]["ratio"] >= ratios["ratio"] - 1e-9
    assert "ceiling" not in summary["ratios"]["time_to_95"]


def test_runs_split_over_processes_report_together_and_never_twice(sim, tmp_path):
    simulate, table, spec = sim
    budget = 4 * table.mean_trial_seconds()
    table_path = tmp_path / "table.json"
    for method in ("kdsearch", "random"):
        runs = simulate.simulate([table], spec, [method], [7], budget, 2,
                                 progress=lambda s: None)
        name = "runs.json.gz" if method == "kdsearch" else "runs.json"  # either is read
        simulate.save_runs(runs, tmp_path / method / name, [table_path])
    runs, paths = simulate.load_all_runs([tmp_path / "kdsearch" / "runs.json.gz",
                                          tmp_path / "random" / "runs.json"])
    assert paths == [table_path] and sorted(r.method for r in runs) == ["kdsearch", "random"]
    assert all(r.finished for r in runs)
    with pytest.raises(SystemExit, match="twice"):
        simulate.load_all_runs([tmp_path / "random" / "runs.json"] * 2)
    other = tmp_path / "other" / "runs.json"
    simulate.save_runs(runs[:1], other, [table_path, tmp_path / "a-replicate.json"])
    with pytest.raises(SystemExit, match="different tables"):
        simulate.load_all_runs([other, tmp_path / "random" / "runs.json"])


def test_replicates_are_drawn_per_point_and_seed_alike_for_every_method(sim, tmp_path):
    simulate, table, spec = sim
    record = benchmark_module("record_table")
    zero, other = tmp_path / "replicate0.json", tmp_path / "replicate1.json"
    for k, path in enumerate((zero, other)):
        assert record.main([str(GRID), "--synthetic", "--replicate", str(k), "--out",
                            str(path)]) == 0
    tables = simulate.load_tables([zero, other])
    assert tables[0].rows == table.rows  # replicate 0 is the table as before
    assert [simulate.realise(tables[:1], s) for s in (0, 1)] == [table, table]
    draws = [simulate.realise(tables, s) for s in range(4)]
    first, second = (t.index() for t in tables)
    for draw in draws:
        assert len(draw.rows) == len(table.rows)
        for row in draw.rows:  # every row is one replicate's row for its point, whole
            key = simulate.point_key(row.params)
            assert row in (first[key], second[key])
        picked = [r for r in draw.rows if r != first[simulate.point_key(r.params)]]
        assert 0 < len(picked) < len(table.rows)  # a mix, not one table
    assert draws[0] == simulate.realise(tables, 0) and draws[0] != draws[1]
    budget = simulate.budget_seconds(tables, 4, 2)
    runs = simulate.simulate(tables, spec, ["kdsearch", "random"], [5], budget, 2,
                             progress=lambda s: None)
    index = simulate.realise(tables, 5).index()
    for run in runs:  # both methods replay seed 5's draw
        for f in run.finished:
            assert f.val == index[simulate.point_key(f.params)].val[f.epochs - 1]
    lines: list[str] = []
    simulate.report(runs, tables, out=lines.append)
    assert any(line.startswith("replicate 1 - replicate 0 over 120 points") for line in lines)
    simulate.save_runs(runs, tmp_path / "runs.json", [zero, other])
    assert simulate.load_all_runs([tmp_path / "runs.json"])[1] == [zero, other]
    bad = tmp_path / "bad.json"
    bad.write_text(other.read_text().replace('"epochs": 8', '"epochs": 7'))
    with pytest.raises(SystemExit, match="not a replicate"):
        simulate.load_tables([other, bad])


def test_variants_differ_from_shipped_only_in_their_settings(sim, tmp_path, capsys):
    simulate, table, spec = sim
    variants = benchmark_module("simulate_variants")
    nostop = variants.variant_method(spec, "no-stopping+centre", 3)
    assert nostop.stopper is None and nostop.spec.search.startup_recipe == "centre"
    warm = variants.variant_method(spec, "after-warmup+keep-0.5+centre", 3).spec.search
    assert warm.early_stopping.after_warmup and warm.early_stopping.keep == 0.5
    assert warm.early_stopping.rungs == [1, 3, 9]  # kdsearch as shipped when they ran
    shipped = variants.variant_method(spec, "shipped", 3).spec.search
    assert shipped.startup_recipe == "drawn" and shipped.early_stopping.rungs == [1, 3, 9]
    twin = variants.variant_method(spec, "rung-6+centre+dedupe", 3)
    assert isinstance(twin, variants.DedupeMethod) and twin.spec.search.early_stopping.rungs == [6]
    wide = variants.variant_method(spec, "rung-6+centre+dedupe+tpe-prior-3+tpe-random-10", 3)
    assert isinstance(wide, variants.DedupeMethod)
    assert variants.split_name("rung-6+centre+dedupe+tpe-prior-3+tpe-random-10") == (
        "rung-6+centre", "dedupe", {"prior_weight": 3.0, "extra_startup": 10})
    skip = variants.variant_method(spec, "no-stopping+centre+skip", 3)
    assert type(skip) is simulate.OptunaMethod and skip.skip_repeats and skip.stopper is None
    assert not variants.variant_method(spec, "no-stopping+centre", 3).skip_repeats
    path = tmp_path / "table.json"
    record = benchmark_module("record_table")
    assert record.main([str(GRID), "--synthetic", "--out", str(path)]) == 0
    capsys.readouterr()
    assert variants.main(["--table", str(path), "--seeds", "0-1", "--variants", "shipped",
                          "--budget-trials", "4", "--peers", "nsga2,optuna-default"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["arm", *simulate.METRICS, "near80"]
    assert [line.split()[0] for line in lines[1:4]] == ["shipped", "nsga2", "optuna-default"]
    assert all(len(line.split()) == len(simulate.METRICS) + 2 for line in lines[1:4])
    assert lines[-1].startswith("shipped") and "hv_log" in lines[-1]


def test_the_repeat_rules_train_no_point_twice_and_keep_what_the_study_is_told(sim):
    """+dedupe tells a repeat its twin's values, +skip ends it PRUNED: neither trains it."""
    simulate, table, spec = sim
    variants = benchmark_module("simulate_variants")
    budget = simulate.budget_seconds([table], 30, 2)
    for rule, state in (("dedupe", "COMPLETE"), ("skip", "PRUNED")):
        methods = []

        def make(name, spec, table, seed, methods=methods):
            methods.append(variants.variant_method(spec, name, seed))
            return methods[-1]

        runs = simulate.simulate([table], spec, [f"no-stopping+centre+{rule}"], [0, 1], budget,
                                 2, progress=lambda line: None, make=make)
        assert all(simulate.repeated(run) == 0 for run in runs)
        repeats = []
        for m in methods:
            trials = sorted(m.study.get_trials(deepcopy=False), key=lambda t: t.number)
            for k, t in enumerate(trials):
                twin = next((u for u in trials[:k] if u.params == t.params), None)
                if twin is not None and t.state.name != "RUNNING":  # running at the budget's end
                    repeats.append((t, twin))
        assert repeats  # TPE did propose points it had tried, on this table and these seeds
        assert {t.state.name for t, _ in repeats} == {state}
        if rule == "dedupe":
            assert all(t.values == twin.values for t, twin in repeats)


def test_selection_noise_counts_the_students_validation_cannot_tell_apart(sim):
    simulate = sim[0]

    def row(n_params, val, test):
        return simulate.Row(params={"i": n_params}, n_params=n_params, macs=0, val=(val,),
                            test=(test,), seconds=(1.0,), test_seconds=0.0)

    rows = (row(1_000, 0.60, 0.58), row(2_000, 0.61, 0.63), row(3_000, 0.50, 0.70),
            row(90_000, 0.90, 0.90))
    table = simulate.Table(rows, "grid.toml", 100_000, 1, {"val_images": 5000})
    line = simulate.selection_noise(table, 80_000)
    # SE at 0.61 on 5,000 images is 0.0069: 0.60 is within two of them, 0.50 is not; the
    # 90,000-param student is over the limit
    assert line.startswith("<= 80,000 params: 2 of 3 students within 2 standard errors")
    assert line.endswith("their test accuracy 0.5800 to 0.6300")
    assert "does not say" in simulate.selection_noise(simulate.Table(rows, "g", 1, 1), 80_000)


def test_near_best_trained_counts_the_runs_chances_among_the_near_ties(sim):
    simulate = sim[0]

    def row(i, n_params, val):
        return simulate.Row(params={"i": i}, n_params=n_params, macs=0, val=(val,),
                            test=(val,), seconds=(1.0,), test_seconds=0.0)

    rows = (row(1, 1_000, 0.60), row(2, 2_000, 0.61), row(3, 3_000, 0.50), row(4, 90_000, 0.9))
    table = simulate.Table(rows, "grid.toml", 100_000, 1, {"val_images": 5000})
    assert simulate.near_best(table, 80_000) == {simulate.point_key({"i": 1}),
                                                 simulate.point_key({"i": 2})}

    def ended(complete, i):
        return simulate.Finished(1.0, complete, 1, 0.5, 0.5, 1, {"i": i})

    # point 1 only stopped, point 3 not near the best: one of the two near-ties trained
    run = simulate.Run("x", 0, 10.0, 1, [ended(False, 1), ended(True, 2), ended(True, 3)])
    assert simulate.near_best_trained(run, table, 80_000) == (1, 2)
    assert simulate.near_best(simulate.Table(rows, "g", 1, 1), 80_000) == set()


def test_refine_variants_train_front_students_again_with_other_settings(sim):
    """+refine-P and +near-P: a share of the trials after the start-up keeps a front student's
    shape and draws only the recipe's knobs."""
    simulate, table, spec = sim
    variants = benchmark_module("simulate_variants")
    assert variants.split_name("no-stopping+centre+skip+near-0.5-rand") == (
        "no-stopping+centre", "skip", {"refine": (0.5, variants.NEAR_EPS, True)})
    method = variants.variant_method(spec, "no-stopping+centre+skip+refine-0.5", 3)
    sampler = method.study.sampler
    assert isinstance(sampler, variants.RefineSampler) and sampler.share == 0.5
    budget = 12 * table.mean_trial_seconds()
    simulate.replay(method, table, budget, 2, simulate.Run("r", 3, budget, 2))
    trials = method.study.get_trials(deepcopy=False)
    refined = [t for t in trials if sampler.shapes.get(t.number)]
    assert refined, "no trial refined a front student in twelve mean trial times"
    assert all(t.number >= sampler.n_startup for t in refined)
    for t in refined:
        shape = sampler.shapes[t.number]
        assert {k: v for k, v in t.params.items() if k in shape} == shape
        assert set(t.params) - set(shape) <= set(variants.RECIPE_KNOBS)
        # the shape is one an earlier trial trained to the end
        assert any(all(u.params.get(k) == v for k, v in shape.items())
                   for u in trials[:t.number] if u.state.name == "COMPLETE")


def test_front_shapes_tolerates_eps_of_accuracy(sim):
    variants = benchmark_module("simulate_variants")
    import optuna
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"w": CategoricalDistribution([1, 2, 3]), "temperature": CategoricalDistribution([2, 4])}
    for w, t, acc, size in ((1, 2, 0.60, 10.0), (2, 2, 0.61, 20.0), (3, 4, 0.59, 30.0)):
        study.add_trial(optuna.trial.create_trial(params={"w": w, "temperature": t},
                                                  distributions=dist, values=[acc, size]))
    assert variants.front_shapes(study, 0.0) == [(("w", 1),), (("w", 2),)]
    # 0.59 at 30 is beaten by 0.61 at 20 by 0.02: inside eps 0.03, outside 0.01
    assert variants.front_shapes(study, 0.03) == [(("w", 1),), (("w", 2),), (("w", 3),)]
    assert variants.front_shapes(study, 0.01) == [(("w", 1),), (("w", 2),)]


def test_repeated_counts_a_point_again_only_after_its_first_try(sim):
    simulate = sim[0]

    def ended(t, i):
        return simulate.Finished(t, True, 1, 0.5, 0.5, 1, {"i": i})

    run = simulate.Run("x", 0, 10.0, 1, [ended(3, 1), ended(1, 1), ended(2, 2), ended(4, 1)])
    assert simulate.repeated(run) == 0.5  # the second and third ends of point 1
    assert simulate.repeated(simulate.Run("x", 0, 10.0, 1)) == 0.0


def test_distinct_complete_counts_each_point_once_and_only_trained_to_the_end(sim):
    simulate = sim[0]

    def ended(complete, n_params, i):
        return simulate.Finished(1.0, complete, n_params, 0.5, 0.5, 1, {"i": i})

    run = simulate.Run("x", 0, 10.0, 1, [ended(True, 10, 1), ended(True, 10, 1),
                                         ended(False, 10, 2), ended(True, 30, 3),
                                         ended(True, 20, 4)])
    assert simulate.distinct_complete(run, 20) == 2  # points 1 and 4; 2 stopped, 3 too big
    assert simulate.distinct_complete(run, 30) == 3


def test_the_real_check_runs_the_tables_study_and_scores_its_trials_as_a_replay(sim):
    import datetime

    from optuna.distributions import CategoricalDistribution
    from optuna.trial import FrozenTrial, TrialState

    simulate, table, spec = sim
    check = benchmark_module("real_check")
    ours, peer = (check.method_spec(spec, m, 3) for m in ("kdsearch", "nsga2"))
    assert ours.seed == peer.seed == 3 and ours.search == spec.search
    assert peer.search.sampler == "nsga2" and not peer.search.early_stopping.enabled

    zero = datetime.datetime(2026, 12, 6, 8, 0, 0)

    def trial(n, state, start, end, **attrs):
        return FrozenTrial(n, state, None, zero + datetime.timedelta(seconds=start),
                           None if end is None else zero + datetime.timedelta(seconds=end),
                           {"i": n}, {"i": CategoricalDistribution(list(range(9)))},
                           attrs, {}, {}, n, values=[0.5, 1.0] if state == TrialState.COMPLETE
                           else None)

    class Study:
        def get_trials(self, deepcopy=False):
            return [trial(0, TrialState.COMPLETE, 0, 50, params=5_000, val_curve=[0.3, 0.6],
                          test_accuracy=0.58),
                    trial(1, TrialState.PRUNED, 50, 70, params=9_000, val_curve=[0.2]),
                    trial(2, TrialState.PRUNED, 70, 70, params=900_000),  # refused: no curve
                    trial(3, TrialState.COMPLETE, 70, 130, params=7_000, val_curve=[0.4, 0.7],
                          test_accuracy=0.69),  # ended after the budget
                    trial(4, TrialState.RUNNING, 130, None, params=7_000)]

    run = check.as_run(Study(), "kdsearch", 3, budget=100)
    assert [(f.seconds, f.complete, f.n_params, f.val, f.test, f.epochs) for f in run.finished] \
        == [(50, True, 5_000, 0.6, 0.58, 2), (70, False, 9_000, 0.2, 0.0, 1)]
    assert run.finished[0].params == {"i": 0} and (run.budget, run.workers) == (100, 1)


def test_the_spot_check_compares_real_trials_with_the_tables_rows(sim):
    simulate, table, _ = sim
    check = benchmark_module("real_check")
    a, b, c = table.rows[:3]
    full = len(a.val)
    took_a = sum(a.seconds) + a.test_seconds
    run = simulate.Run("kdsearch", 0, 1e9, 1, finished=[
        simulate.Finished(2 * took_a, True, a.n_params, a.val[-1] + 0.02, a.test[-1] - 0.01,
                          full, a.params),
        simulate.Finished(2 * took_a + sum(b.seconds[:2]), False, b.n_params, b.val[1], 0.0,
                          2, b.params),  # stopped: compared at its epoch, no test
        simulate.Finished(3 * took_a, True, c.n_params, c.val[-1], c.test[-1], full, c.params)])
    lines: list[str] = []
    got = check.spot_check([run], table, out=lines.append)
    assert (got["trials"], got["complete"]) == (3, 2)
    assert got["val_mean_diff"] == pytest.approx(0.02 / 3)
    assert got["test_mean_diff"] == pytest.approx(-0.005)
    assert got["test_mean_abs_diff"] == pytest.approx(0.005)
    table_s = took_a + sum(b.seconds[:2]) + sum(c.seconds) + c.test_seconds
    assert got["seconds_real_over_table"] == pytest.approx(3 * took_a / table_s)
    assert len(lines) == 5 and lines[-1].startswith("3 trials (2 complete)")
    outside = simulate.Run("nsga2", 0, 1e9, 1, finished=[simulate.Finished(
        1.0, True, 1, 0.5, 0.5, full, {"not": "in the table"})])
    with pytest.raises(SystemExit, match="nsga2-0: a trial outside the table"):
        check.spot_check([outside], table, out=lines.append)
    assert check.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
