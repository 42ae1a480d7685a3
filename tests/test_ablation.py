"""d2a-ablation (training/ablation.py), with d2a-train and d2a-eval faked: no training runs."""
import json
from pathlib import Path

import pytest

from conftest import requires_torch

pytestmark = requires_torch  # training.data.shards imports torch


def shards(folder: Path) -> str:
    """An empty shard folder that passes d2a-ablation's manifest check."""
    from d2a_edge.training.data.shards import FORMAT, VERSION
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": VERSION}))
    return str(folder)


def fake_metrics() -> dict:
    m = {"mpjpe": 1.0, "pa_mpjpe": 1.0, "pve": 1.0, "trans_err_cm": 1.0, "pck3d_150": 0.5}
    return {"splits": {"id": m}}


def test_ablation_checks_its_data_first_and_merges_its_results(tmp_path, monkeypatch, capsys):
    """d2a-ablation: a bad --eval-data fails before any training (it failed after the first
    config had trained); --steps 0 is a usage error; a rerun of some configs keeps the other
    rows and does not train a config already recorded; the table goes to OUT/ablation.md unless
    --doc says otherwise (it defaulted to ./docs/ablation.md, overwriting the committed one from the
    repository root)."""
    from d2a_edge.training import ablation
    data = shards(tmp_path / "shards")
    calls = []

    def fake(config, args):  # stands in for d2a-train + d2a-eval
        calls.append(config)
        return {"config": config, "train_seconds": 60.0, **fake_metrics()}

    monkeypatch.setattr(ablation, "train_and_eval", fake)
    base = ["--data", data, "--eval-data", data, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="manifest.json not found"):
        ablation.main([*base[:2], "--eval-data", str(tmp_path / "nope"), *base[4:],
                       "--steps", "1"])
    assert calls == []
    with pytest.raises(SystemExit) as e:
        ablation.main([*base, "--steps", "0"])
    assert e.value.code == 2 and "--steps: must be >= 1" in capsys.readouterr().err
    ablation.main([*base, "--steps", "1", "--configs", "edge-s", "edge-s-rle"])
    ablation.main([*base, "--steps", "1", "--configs", "edge-s", "edge-s-depth"])
    assert calls == ["edge-s", "edge-s-rle", "edge-s-depth"]
    rows = {r["config"]: r for r in json.loads((tmp_path / "o" / "ablation.json").read_text())}
    assert set(rows) == {"edge-s", "edge-s-rle", "edge-s-depth"}
    assert rows["edge-s"]["train_seconds"] == 60.0
    assert "| edge-s-rle |" in (tmp_path / "o" / "ablation.md").read_text()


def test_ablation_trains_on_every_data_folder_given(tmp_path, monkeypatch, capsys):
    """d2a-ablation --data A B passes both folders to d2a-train (it took one), each --eval-data
    to d2a-eval, and names the folders in the table."""
    from d2a_edge.training import ablation
    folders = [shards(tmp_path / name) for name in ("a", "b", "test")]
    commands = []

    class FakePopen:  # d2a-train / d2a-eval
        def __init__(self, cmd):
            commands.append(cmd)
            if Path(cmd[0]).name == "d2a-eval":
                out = Path(cmd[cmd.index("--out") + 1])
                out.mkdir(parents=True)
                (out / "metrics.json").write_text(json.dumps(fake_metrics()))

        def wait(self):
            return 0

    monkeypatch.setattr(ablation.subprocess, "Popen", FakePopen)
    ablation.main(["--data", *folders[:2], "--eval-data", folders[2], "--out",
                   str(tmp_path / "o"), "--steps", "3", "--configs", "edge-s"])
    train, evaluate = commands
    assert train[train.index("--data") + 1:train.index("--out")] == folders[:2]
    assert evaluate[evaluate.index("--data") + 1] == folders[2]
    assert f"`{folders[0]}`, `{folders[1]}`" in (tmp_path / "o" / "ablation.md").read_text()


def test_ablation_refuses_to_mix_rows_of_other_settings(tmp_path, monkeypatch, capsys):
    """Configs trained with --steps 2 --seed 0, then another with --steps 3 --seed 4 into the
    same --out: ablation.md said "Same seed (4), 3 steps each" over rows of step 2, seed 0. Now
    the second call stops before training (exit 2), naming the earlier settings, and the record
    stays as it was; other --data, or a record without settings, is refused the same way."""
    from d2a_edge.training import ablation
    calls = []
    monkeypatch.setattr(ablation, "train_and_eval", lambda config, args: calls.append(config)
                        or {"config": config, "train_seconds": 60.0, **fake_metrics()})
    data, other = shards(tmp_path / "train"), shards(tmp_path / "other")
    base = ["--eval-data", shards(tmp_path / "test"), "--out", str(tmp_path / "o")]
    ablation.main(["--data", data, *base, "--steps", "2", "--seed", "0",
                   "--configs", "edge-s", "edge-s-rle"])
    record = (tmp_path / "o" / "ablation.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ablation.main(["--data", data, *base, "--steps", "3", "--seed", "4",
                       "--configs", "edge-s-depth"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and calls == ["edge-s", "edge-s-rle"]
    assert "holds edge-s, edge-s-rle trained with --steps 2 --seed 0, not this run's --steps 3 " \
           "--seed 4" in err and "another --out" in err
    assert (tmp_path / "o" / "ablation.json").read_text() == record
    with pytest.raises(SystemExit) as e:
        ablation.main(["--data", other, *base, "--steps", "2", "--configs", "edge-s-depth"])
    assert e.value.code == 2 and f"--data {Path(data).resolve()}, not" in capsys.readouterr().err
    ablation.main(["--data", data, *base, "--steps", "2", "--configs", "edge-s-depth"])
    rows = json.loads((tmp_path / "o" / "ablation.json").read_text())
    assert [r["config"] for r in rows] == ["edge-s", "edge-s-depth", "edge-s-rle"]
    assert {r["settings"]["steps"] for r in rows} == {2}
    old = tmp_path / "old"  # a record of before the settings were kept in it
    old.mkdir()
    (old / "ablation.json").write_text(json.dumps([{"config": "edge-s", **fake_metrics()}]))
    with pytest.raises(SystemExit) as e:
        ablation.main(["--data", data, *base[:2], "--out", str(old), "--steps", "2"])
    assert e.value.code == 2 and "older d2a-ablation" in capsys.readouterr().err


def test_ablation_ctrl_c_keeps_the_record_and_the_train_times(tmp_path, monkeypatch, capsys):
    """Ctrl-C while edge-s-rle trained, edge-s done: a KeyboardInterrupt traceback and no
    ablation.json (it was written at the end only), d2a-train killed 0.25 s after the signal
    (before its checkpoint), and the rerun recorded edge-s's train time as its no-op resume's
    few seconds. Now the record is saved after each config, d2a-train is waited for, the
    command says how to go on (exit 130), and the rerun skips edge-s and adds up edge-s-rle's
    time over both calls."""
    from d2a_edge.training import ablation
    clock = {"now": 0.0}
    monkeypatch.setattr(ablation.time, "perf_counter", lambda: clock["now"])
    plan = [(100.0, False), (40.0, True), (60.0, False)]  # each d2a-train: seconds, Ctrl-C?
    started = []

    class FakePopen:  # d2a-train / d2a-eval, also as subprocess.run uses it
        def __init__(self, cmd):
            self.cmd = self.args = cmd
            self.waits, self.killed, self.returncode = 0, False, None
            started.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def communicate(self, input=None, timeout=None):
            self.returncode = self.wait()
            return None, None

        def poll(self):
            return self.returncode

        def wait(self):
            self.waits += 1
            if Path(self.cmd[0]).name == "d2a-eval":
                out = Path(self.cmd[self.cmd.index("--out") + 1])
                out.mkdir(parents=True, exist_ok=True)
                (out / "metrics.json").write_text(json.dumps(fake_metrics()))
                return 0
            if self.waits > 1:
                return 130  # stopped by the SIGINT, with a checkpoint
            seconds, ctrl_c = plan.pop(0)
            clock["now"] += seconds
            if ctrl_c:
                raise KeyboardInterrupt
            return 0

        def kill(self):
            self.killed = True

    monkeypatch.setattr(ablation.subprocess, "Popen", FakePopen)
    data = shards(tmp_path / "train")
    cmd = ["--data", data, "--eval-data", data, "--out", str(tmp_path / "o"), "--steps", "2",
           "--configs", "edge-s", "edge-s-rle"]
    with pytest.raises(SystemExit) as e:
        try:
            ablation.main(cmd)
        except KeyboardInterrupt:  # would stop the whole pytest session
            pytest.fail("the KeyboardInterrupt escaped d2a-ablation (a traceback, no exit code)")
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted; rerun the same command to go on" in err
    rle = started[-1]
    assert "edge-s-rle" in rle.cmd and rle.waits == 2 and not rle.killed
    rows = json.loads((tmp_path / "o" / "ablation.json").read_text())
    assert [(r["config"], r["train_seconds"]) for r in rows] == [("edge-s", 100.0)]
    assert "| edge-s |" in (tmp_path / "o" / "ablation.md").read_text()
    started.clear()
    ablation.main(cmd)
    assert [Path(p.cmd[0]).name for p in started] == ["d2a-train", "d2a-eval"]
    assert "edge-s-rle" in started[0].cmd
    rows = json.loads((tmp_path / "o" / "ablation.json").read_text())
    assert [(r["config"], r["train_seconds"]) for r in rows] == [("edge-s", 100.0),
                                                                 ("edge-s-rle", 100.0)]


def test_ablation_d2a_train_stopped_by_a_signal_is_an_interruption(tmp_path, monkeypatch, capsys):
    """A SIGINT that reached d2a-train alone (it stops with a checkpoint, exit 130) was reported
    as "d2a-train failed with exit code 130" (exit 1); now as an interruption, exit 130."""
    import subprocess

    from d2a_edge.training import ablation

    def stopped(config, args):
        raise subprocess.CalledProcessError(130, ["d2a-train", config, "--resume"])

    monkeypatch.setattr(ablation, "train_and_eval", stopped)
    data = shards(tmp_path / "train")
    with pytest.raises(SystemExit) as e:
        ablation.main(["--data", data, "--eval-data", data, "--out", str(tmp_path / "o"),
                       "--steps", "2", "--configs", "edge-s"])
    assert e.value.code == 130
    assert "d2a-train edge-s was interrupted; rerun the same command" in capsys.readouterr().err


def test_ablation_refuses_other_settings_for_a_config_it_began(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the first config, before any row existed: a rerun with other --steps was
    not refused (only d2a-train --resume warned about some settings, and --steps re-fitted its
    schedule), so the table mixed budgets. The settings a config began with are now checked."""
    from d2a_edge.training import ablation

    def interrupted(cmd):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "_run", interrupted)
    data = shards(tmp_path / "train")
    cmd = ["--data", data, "--eval-data", data, "--out", str(tmp_path / "o"), "--configs",
           "edge-s"]
    with pytest.raises(SystemExit) as e:
        ablation.main([*cmd, "--steps", "2"])
    assert e.value.code == 130 and not (tmp_path / "o" / "ablation.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ablation.main([*cmd, "--steps", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "holds edge-s trained with --steps 2, not this run's " \
                                 "--steps 3" in err
