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
    rows and adds up a config's train time; the table goes to OUT/ablation.md unless --doc says
    otherwise (it defaulted to ./docs/ablation.md, overwriting the committed one from the
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
    ablation.main([*base, "--steps", "1", "--configs", "edge-s"])
    rows = {r["config"]: r for r in json.loads((tmp_path / "o" / "ablation.json").read_text())}
    assert set(rows) == {"edge-s", "edge-s-rle"}
    assert rows["edge-s"]["train_seconds"] == 120.0 and rows["edge-s-rle"]["train_seconds"] == 60
    assert "| edge-s-rle |" in (tmp_path / "o" / "ablation.md").read_text()


def test_ablation_trains_on_every_data_folder_given(tmp_path, monkeypatch, capsys):
    """d2a-ablation --data A B passes both folders to d2a-train (it took one), each --eval-data
    to d2a-eval, and names the folders in the table."""
    from d2a_edge.training import ablation
    folders = [shards(tmp_path / name) for name in ("a", "b", "test")]
    commands = []

    def fake_run(cmd, check):  # d2a-train / d2a-eval
        commands.append(cmd)
        if Path(cmd[0]).name == "d2a-eval":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps(fake_metrics()))

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
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
