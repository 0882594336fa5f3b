"""The runbook restore-plan writes for each layout, against reviewed golden files.

After a deliberate change, regenerate them with UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcd_backupd.cli import main
from etcd_backupd.config import parse_config
from etcd_backupd.errors import ConfigError, ExitCode

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "restore-plan"


def members(scheme: str) -> list[str]:
    return [
        arg for n in (1, 2, 3) for arg in ("--member", f"etcd{n}={scheme}://192.168.7.10{n}:2380")
    ]


@dataclass(frozen=True)
class Case:
    layout: str
    config: str
    options: list[str]
    members: list[str]


DESTINATION = "[[destination]]\nname = 'local'\ntype = 'local'\npath = '/var/backups/etcd'\n"
SYSTEMD_OPTIONS = ["--data-dir-owner", "etcd:etcd", "--etcd-bin-dir", "/opt/etcd/bin"]
# each case's golden files are in the folder of its name
CASES = {
    # kubeadm's own client certificate, root-only like every key kubeadm writes
    "kubeadm": Case(
        "kubeadm",
        "[etcd]\nendpoints = ['https://192.168.7.101:2379']\n"
        "cacert = '/etc/kubernetes/pki/etcd/ca.crt'\n"
        "cert = '/etc/kubernetes/pki/etcd/healthcheck-client.crt'\n"
        "key = '/etc/kubernetes/pki/etcd/healthcheck-client.key'\n",
        [],
        members("https"),
    ),
    # an etcd of its own user, with auth on
    "systemd": Case(
        "systemd",
        "[etcd]\nendpoints = ['https://192.168.7.101:2379']\n"
        "cacert = '/etc/etcd/pki/ca.pem'\ncert = '/etc/etcd/pki/backup.pem'\n"
        "key = '/etc/etcd/pki/backup-key.pem'\nusername = 'root'\n"
        "password_file = '/etc/etcd-backupd/etcd-password'\n",
        SYSTEMD_OPTIONS,
        members("https"),
    ),
    # no TLS and no auth anywhere: plain HTTP between clients and members and among members
    "systemd-plain": Case(
        "systemd",
        "[etcd]\nendpoints = ['http://192.168.7.101:2379']\n",
        SYSTEMD_OPTIONS,
        members("http"),
    ),
}


def plan(name: str, tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, str]:
    case = CASES[name]
    tmp.mkdir(exist_ok=True)
    config = tmp / "config.toml"
    config.write_text(case.config + DESTINATION)
    args = ["restore-plan", "--config", str(config), *case.members, *case.options,
            "--snapshot", "/var/backups/etcd/etcd-snapshot-prod-20261123T224500Z.db.zst",
            "--layout", case.layout, *extra]  # fmt: skip
    assert main(args) == 0
    files = {"runbook.md": capsys.readouterr().out}
    assert main([*args, "--output", "script", "--script-dir", str(tmp / "scripts")]) == 0
    capsys.readouterr()
    for script in sorted((tmp / "scripts").iterdir()):
        files[script.name] = script.read_text()
    return files


@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_plan_matches_its_golden_files(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = plan(case, tmp_path, capsys)
    assert sorted(files) == ["restore-etcd1.sh", "restore-etcd2.sh", "restore-etcd3.sh",
                             "runbook.md"]  # fmt: skip
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), f"golden files of {case}"
    for name, text in files.items():
        assert text == (folder / name).read_text(), f"{case}/{name} differs from its golden file"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_script_parses_and_names_no_secret(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in plan(case, tmp_path, capsys).items():
        if name.endswith(".sh"):
            path = tmp_path / name
            path.write_text(text)
            checked = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
            assert checked.returncode == 0, checked.stderr
            assert '--initial-cluster-token "$TOKEN"' in text
            assert "TOKEN=etcd-restore-prod-20261123T224500Z" in text


def test_scripts_refuse_an_unknown_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "restore-etcd1.sh"
    script.write_text(plan("systemd", tmp_path, capsys)["restore-etcd1.sh"])
    refused = subprocess.run(["sh", str(script), "swap"], capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.startswith("FAILED: no step swap; the steps: prepare stop_kubernetes")


def test_no_bump_changes_only_the_bump_setting_and_its_explanation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bumped = plan("kubeadm", tmp_path / "bumped", capsys)
    plain = plan("kubeadm", tmp_path / "plain", capsys, "--no-bump")
    assert sorted(plain) == sorted(bumped)
    for name, text in bumped.items():
        changed = [
            (before, after)
            for before, after in zip(text.splitlines(), plain[name].splitlines(), strict=True)
            if before != after
        ]
        why = "  # the same on every member; 0: no bump (for an etcdutl before 3.5.10)"
        setting = (f"BUMP_REVISION=1000000000{why}", f"BUMP_REVISION=0{why}")
        if name.endswith(".sh"):
            assert changed == [setting]
            continue
        (explained, *settings) = changed
        assert settings == [setting]
        assert explained[0].startswith("Revision bump: `1000000000` on every member")
        assert explained[1] == (
            "Revision bump: none (`--no-bump`): once etcd is back, restart the kubelet on every "
            "node and every controller outside the control plane, so that none keeps watching "
            "revisions from before the restore."
        )


@pytest.mark.parametrize(
    "given",
    [
        ["--member", "etcd1=http://"],
        ["--member", "etcd1=https://:2380"],
        ["--member", "etcd1=https://root:secret@10.0.0.1:2380"],
        ["--member", "etcd1=https://10.0.0.1:2380", "--client-url", "etcd1=http://"],
    ],
    ids=["no-host", "port-only", "credentials", "client-url"],
)
def test_member_urls_are_refused_as_the_configs_restore_table_refuses_them(
    given: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    option, value = given[-2:]
    name, _, url = value.partition("=")
    table = "client_urls" if option == "--client-url" else "members"
    members = {"members": {name: "https://10.0.0.1:2380"}} if table == "client_urls" else {}
    with pytest.raises(ConfigError) as refused:
        parse_config({"restore": {**members, table: {name: url}}})
    reason = str(refused.value).rpartition(f"{name}: ")[2]

    args = ["restore-plan", "--snapshot", "/s.db", "--layout", "systemd", *given]
    assert main(args) == ExitCode.CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"etcd-backupd: {option} {name}: {reason}"]
    assert "secret" not in captured.err


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "sp ace"])
def test_member_names_that_would_leave_the_script_dir_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the [restore] table refuses the same name, and a script is named after its member
    with pytest.raises(ConfigError):
        parse_config({"restore": {"members": {name: "https://10.0.0.1:2380"}}})
    scripts = tmp_path / "scripts"
    args = ["restore-plan", "--snapshot", "/s.db", "--layout", "systemd"]
    args += ["--member", f"{name}=https://10.0.0.1:2380", "--member", "ok=https://10.0.0.2:2380"]
    args += ["--output", "script", "--script-dir", str(scripts)]
    assert main(args) == ExitCode.CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"etcd-backupd: --member member name {name!r} may hold only letters, digits, '.', '_' "
        "and '-'"
    ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == []
